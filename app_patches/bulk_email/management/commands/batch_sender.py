"""``manage.py batch_sender [--watch [--interval SECONDS]] [--json]``: batch mode's sender.

One pass (see bulk_email.batch_sender): delete the spool pokes, send every
dispatched batch campaign with pending deliveries, oldest first, exit 0.
systemd runs it as ``edupulse-batch-sender.service`` from a path unit (a
poke) and a timer (leftovers). ``--watch`` runs passes forever instead (a
poke within a second, the ledger every --interval seconds, default 60),
for runserver development or a launchd agent.

Output per pass: ``batch sender: <n> campaigns, sent=<n> failed=<n> pending=<n>``,
``stopped: <reason>`` when a campaign stopped early (quota, outage: the rest
waits for the next pass), and with --json one JSON object {"pokes",
"campaigns", "busy" (left to a runner sending them right now), "sent",
"failed", "pending", "stopped"}. A rejected SMTP login
or a server without STARTTLS is a one-line error and exit status 1.
"""
import json
from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from bulk_email import batch_sender
from bulk_email.sending import describe
from bulk_email.smtp_errors import SmtpConfigurationError


class Command(BaseCommand):
    help = "Send the pending deliveries of dispatched batch campaigns (one pass, or --watch)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--watch", action="store_true", help="Run passes forever (development).")
        parser.add_argument(
            "--interval", type=float, default=60,
            help="With --watch: seconds between passes without a poke (default 60).",
        )
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line per pass.")

    def handle(self, *args, **options) -> None:
        if options["interval"] <= 0:
            raise CommandError(f"--interval must be more than 0, got {options['interval']}")
        try:
            if options["watch"]:
                batch_sender.watch(interval=options["interval"], on_pass=lambda s: self._report(s, options))
            else:
                self._report(batch_sender.run_pass(), options)
        except SmtpConfigurationError as exc:  # the ledger's words; the SMTP reply is its cause
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            raise CommandError(f"SMTP configuration error, nothing more sent: {describe(cause)}") from None
        except KeyboardInterrupt:  # Ctrl-C of --watch: what it did not send stays pending
            self.stdout.write("batch sender: interrupted")

    def _report(self, summary: dict, options: dict) -> None:
        self.stdout.write(
            f"batch sender: {summary['campaigns']} campaigns, busy={summary['busy']} sent={summary['sent']} "
            f"failed={summary['failed']} pending={summary['pending']}"
        )
        if summary["stopped"]:
            self.stdout.write(f"stopped: {summary['stopped']}")
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        self.stdout.flush()
