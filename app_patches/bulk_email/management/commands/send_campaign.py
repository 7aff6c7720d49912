"""``manage.py send_campaign``: create a campaign and send it, or resume one.

Output (stable, parsed by tests and deployment checks):
    campaign <uuid>
    mode=<mode> recipients=<n> sent=<n> failed=<n> pending=<n>
    [stopped: <reason>]
    [held: <reason>]  (a queue mode switch is in progress: nothing sent or enqueued yet)
    [{"id": ..., "mode": ..., "recipients": n, "sent": n, "failed": n, "pending": n,
      "held": bool}]  (--json, last line)

A held campaign is already in the mode it will go out in (mode=<new mode>);
``queue_switch dispatch-held`` sends it when the switch completes.
"""
import json
from argparse import ArgumentParser
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from bulk_email.campaigns import create_campaign
from bulk_email.dispatch import dispatch
from bulk_email.models import Campaign
from bulk_email.smtp_errors import SmtpConfigurationError


def read_recipients_file(path: str) -> list[str]:
    """One address per line; blank lines and lines starting with # are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read recipients file {path}: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_text(path: str, what: str) -> str:
    """Read a body file, turning a missing file into a clear command error."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc.strerror}") from None


class Command(BaseCommand):
    help = "Create a bulk email campaign and dispatch it (or --resume an existing one)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--subject", help="Subject line.")
        body = parser.add_mutually_exclusive_group()
        body.add_argument("--body", help="Plain-text body.")
        body.add_argument("--body-file", help="File holding the plain-text body.")
        parser.add_argument("--html-file", help="File holding an HTML alternative body.")
        parser.add_argument(
            "--to", action="append", default=[], metavar="ADDRESS",
            help="A recipient; repeat for more.",
        )
        parser.add_argument("--recipients-file", help="File with one address per line.")
        parser.add_argument("--from", dest="from_email", help="Sender (default DEFAULT_FROM_EMAIL).")
        parser.add_argument(
            "--resume", metavar="CAMPAIGN_ID",
            help="Send the still-pending deliveries of an existing campaign instead.",
        )
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args, **options) -> None:
        campaign = self._resume(options["resume"]) if options["resume"] else self._create(options)
        self.stdout.write(f"campaign {campaign.id}")
        try:
            run = dispatch(campaign)
        except SmtpConfigurationError as exc:  # a wrong password (535): one line and the counts
            counts = campaign.counts()
            self.stdout.write(f"mode={campaign.mode} recipients={sum(counts.values())} sent={counts['sent']} "
                              f"failed={counts['failed']} pending={counts['pending']}")
            raise CommandError(str(exc)) from None
        counts = run.counts
        summary = {
            "id": str(campaign.id),
            "mode": campaign.mode,
            "recipients": sum(counts.values()),
            "sent": counts["sent"],
            "failed": counts["failed"],
            "pending": counts["pending"],
            "held": run.held is not None,
        }
        self.stdout.write(
            " ".join(f"{key}={summary[key]}" for key in ("mode", "recipients", "sent", "failed", "pending"))
        )
        if run.stopped:
            self.stdout.write(f"stopped: {run.stopped}")
        if run.held:
            self.stdout.write(f"held: {run.held}")
        if options["json"]:
            self.stdout.write(json.dumps(summary))

    def _resume(self, campaign_id: str) -> Campaign:
        try:
            return Campaign.objects.get(pk=campaign_id)
        except (Campaign.DoesNotExist, ValidationError):
            raise CommandError(f"unknown campaign {campaign_id}") from None

    def _create(self, options: dict) -> Campaign:
        if not options["subject"]:
            raise CommandError("--subject is required")
        if options["body_file"]:
            body = read_text(options["body_file"], "body file")
        elif options["body"] is not None:
            body = options["body"]
        else:
            raise CommandError("--body or --body-file is required")
        html = read_text(options["html_file"], "HTML file") if options["html_file"] else None
        recipients = list(options["to"])
        if options["recipients_file"]:
            recipients += read_recipients_file(options["recipients_file"])
        try:
            return create_campaign(
                options["subject"], body, recipients, html_body=html, from_email=options["from_email"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
