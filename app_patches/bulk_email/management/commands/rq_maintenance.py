"""``manage.py rq_maintenance [--json]``: what RQ does too rarely after a worker is killed.

roles/rqworker runs it every minute from a systemd timer (rq mode only). It
hands the jobs of killed workers back to RQ (``rq_jobs.recover_abandoned``),
enqueues again the pending deliveries of campaigns whose jobs Redis lost
(``rq_jobs.recover_lost_batches``), and enqueues due scheduled jobs while no
live scheduler holds the lock (``rq_jobs.enqueue_due_scheduled``). Prints
``recovered <n> abandoned jobs``, ``re-enqueued <k> recipients of lost jobs``
and ``enqueued <m> due scheduled jobs``; --json adds
{"recovered": n, "reenqueued": k, "enqueued": m}.
"""
import json
from argparse import ArgumentParser

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bulk_email import modes


class Command(BaseCommand):
    help = "Retry (or fail) the jobs that killed RQ workers left in the started registries."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args: object, **options: object) -> None:
        mode = settings.BULK_EMAIL_QUEUE_MODE
        if not modes.get(mode).needs_rq_maintenance:
            needed = " or ".join(modes.names_where(lambda other: other.needs_rq_maintenance))
            raise CommandError(
                f"rq_maintenance is for BULK_EMAIL_QUEUE_MODE={needed} (RQ's job registries), not {mode}"
            )
        from bulk_email.rq_jobs import enqueue_due_scheduled, recover_abandoned, recover_lost_batches

        recovered = recover_abandoned()
        reenqueued = recover_lost_batches()
        enqueued = enqueue_due_scheduled()
        self.stdout.write(f"recovered {recovered} abandoned jobs")
        self.stdout.write(f"re-enqueued {reenqueued} recipients of lost jobs")
        self.stdout.write(f"enqueued {enqueued} due scheduled jobs")
        if options["json"]:
            self.stdout.write(json.dumps({"recovered": recovered, "reenqueued": reenqueued, "enqueued": enqueued}))
