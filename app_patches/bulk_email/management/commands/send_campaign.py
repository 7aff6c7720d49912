"""``manage.py send_campaign``: create a campaign and send it, or resume one.

In batch mode the campaign is sent in this command's own process (the
operator waits; this is not a web request) and marked dispatched first, so
whatever the run leaves pending (quota, SMTP outage) is sent later by the
batch sender (``manage.py batch_sender``, run by edupulse-batch-sender.timer),
and the output says so. rq and celery enqueue and return.

``--body-file``, ``--html-file`` and ``--recipients-file`` take ``-`` for
standard input (one of them at most): the deployment's edupulse-manage
wrapper reads the caller's files and passes them on that way.

Output (stable, parsed by tests and deployment checks):
    campaign <uuid>
    [Batch mode: <n> recipients; for more than 50 the rq or celery mode ...]  (batch, > 50)
    mode=<mode> recipients=<n> sent=<n> failed=<n> pending=<n>
    [stopped: <reason>]
    [<n> deliveries left pending (<reason>): the batch sender ...]  (batch)
    [held: <reason>]  (a queue mode switch is in progress: nothing sent or enqueued yet)
    [{"id": ..., "mode": ..., "recipients": n, "sent": n, "failed": n, "pending": n,
      "held": bool}]  (--json, last line)

A held campaign is already in the mode it will go out in (mode=<new mode>);
``queue_switch dispatch-held`` sends it when the switch completes.
"""
import json
import sys
from argparse import ArgumentParser
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from bulk_email import modes
from bulk_email.api import guidance
from bulk_email.campaigns import create_campaign
from bulk_email.dispatch import dispatch
from bulk_email.models import Campaign
from bulk_email.smtp_errors import SmtpConfigurationError

STDIN = "-"
FILE_OPTIONS = {"body_file": "--body-file", "html_file": "--html-file", "recipients_file": "--recipients-file"}


def read_text(path: str, what: str) -> str:
    """Read a file (``-``: standard input) as UTF-8, turning any failure into a clear command error."""
    try:
        if path == STDIN:
            stream = getattr(sys.stdin, "buffer", None)
            return stream.read().decode("utf-8") if stream is not None else sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"cannot read {what} {path}: not UTF-8 text") from None


def read_recipients_file(path: str) -> list[str]:
    """One address per line; blank lines and lines starting with # are ignored."""
    lines = read_text(path, "recipients file").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_stdin_once(options: dict) -> None:
    """Standard input can be read once: refuse ``-`` for two files."""
    from_stdin = [flag for key, flag in FILE_OPTIONS.items() if options.get(key) == STDIN]
    if len(from_stdin) > 1:
        raise CommandError(f"only one of {', '.join(from_stdin)} can be - (standard input)")


class Command(BaseCommand):
    help = "Create a bulk email campaign and dispatch it (or --resume an existing one)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--subject", help="Subject line.")
        body = parser.add_mutually_exclusive_group()
        body.add_argument("--body", help="Plain-text body.")
        body.add_argument("--body-file", help="File holding the plain-text body (- for stdin).")
        parser.add_argument("--html-file", help="File holding an HTML alternative body (- for stdin).")
        parser.add_argument(
            "--to", action="append", default=[], metavar="ADDRESS",
            help="A recipient; repeat for more.",
        )
        parser.add_argument("--recipients-file", help="File with one address per line (- for stdin).")
        parser.add_argument("--from", dest="from_email", help="Sender (default DEFAULT_FROM_EMAIL).")
        parser.add_argument(
            "--resume", metavar="CAMPAIGN_ID",
            help="Send the still-pending deliveries of an existing campaign instead.",
        )
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args, **options) -> None:
        campaign = self._resume(options["resume"]) if options["resume"] else self._create(options)
        self.stdout.write(f"campaign {campaign.id}")
        advice = guidance(campaign)
        if advice:
            self.stdout.write(advice)
        try:
            run = dispatch(campaign, wait=True)
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
        if not run.held and counts["pending"]:
            leftover = modes.get(campaign.mode).leftover_line(campaign, counts["pending"], run.stopped)
            if leftover:
                self.stdout.write(leftover)
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
        check_stdin_once(options)
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
