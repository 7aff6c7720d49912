"""``manage.py retry_failed [--include-failed] [--dry-run] [--json]``: try again what is stuck.

The logic is bulk_email.retry.retry_failed, which the campaign page's retry
button runs too (for one campaign). rq: failed campaign jobs go back on the
queue with fresh retries; celery: campaigns whose tasks used up their
retries are enqueued again from the ledger; batch: the pending deliveries
of batch campaigns are sent now, in this process (like ``send_campaign
--resume`` for each). ``--include-failed`` first turns failed deliveries
(permanent errors) back to pending, for when their cause was fixed.

Output: ``retried <n> <what>`` (``would retry`` with --dry-run, which changes
nothing) or ``nothing to retry``; ``campaign <id> stopped: <reason>`` when a
batch run stopped early; with --include-failed ``<n> failed deliveries made
pending again`` (``would make``); --json adds one JSON object as the last
line: {"mode", "dry_run", "jobs" (rq), "jobs" + "deliveries" (celery) or
"campaigns" + "deliveries" (+ "stopped") (batch), "retried"; with --include-failed
also "revived" (+ "campaigns_revived" in rq/celery)}.
"""
import json
from argparse import ArgumentParser

from django.conf import settings
from django.core.management.base import BaseCommand

from bulk_email import modes
from bulk_email.retry import retry_failed


class Command(BaseCommand):
    help = "Re-enqueue failed campaign jobs (rq, celery) or re-send pending deliveries (batch)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report only, change nothing.")
        parser.add_argument(
            "--include-failed", action="store_true",
            help="Also turn failed deliveries (permanent errors) back to pending and send them.",
        )
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args, **options) -> None:
        mode = settings.BULK_EMAIL_QUEUE_MODE
        dry_run = options["dry_run"]
        summary = retry_failed(include_failed=options["include_failed"], dry_run=dry_run, wait=True)
        count, what = modes.get(mode).retry_outcome(summary)
        if options["include_failed"]:
            verb = "would make" if dry_run else "made"
            self.stdout.write(f"{summary['revived']} failed deliveries {verb} pending again")
        if not count and not summary.get("campaigns_revived"):
            self.stdout.write("nothing to retry")
        elif count:
            self.stdout.write(f"{'would retry' if dry_run else 'retried'} {count} {what}")
        if summary.get("stopped"):
            self.stdout.write(summary["stopped"])
        if options["json"]:
            self.stdout.write(json.dumps({"mode": mode, "dry_run": dry_run, **summary}))
