"""``manage.py rq_maintenance [--json]``: recover the jobs of killed RQ workers.

roles/rqworker runs it every minute from a systemd timer (rq mode only); see
``rq_jobs.recover_abandoned`` for why RQ's own maintenance is not enough.
Prints ``recovered <n> abandoned jobs``; --json adds {"recovered": n}.
"""
import json
from argparse import ArgumentParser

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Retry (or fail) the jobs that killed RQ workers left in the started registries."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args: object, **options: object) -> None:
        if settings.BULK_EMAIL_QUEUE_MODE != "rq":
            raise CommandError("rq_maintenance is for rq mode (BULK_EMAIL_QUEUE_MODE=rq)")
        from bulk_email.rq_jobs import recover_abandoned

        recovered = recover_abandoned()
        self.stdout.write(f"recovered {recovered} abandoned jobs")
        if options["json"]:
            self.stdout.write(json.dumps({"recovered": recovered}))
