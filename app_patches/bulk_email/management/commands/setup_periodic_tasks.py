"""``manage.py setup_periodic_tasks [--health-interval SECONDS] [--json]`` (celery mode).

Registers bulk_email's periodic task, the queue-health report, in
django-celery-beat's database schedule (the one beat reads with the
DatabaseScheduler), so it is visible and editable in the admin like any
other entry. Idempotent: a second run changes nothing and says so, which is
how the Ansible role reports "changed" truthfully. ``--health-interval 0``
disables the entry (it is kept, so its run history stays).

Output: ``periodic task <name>: created|updated|unchanged``; --json adds
{"changed": bool, "name": ..., "every": ..., "enabled": ...} as the last line.
"""
import json
from argparse import ArgumentParser

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from bulk_email import modes

HEALTH_TASK_NAME = "bulk_email queue health"


def register_health_task(every: int) -> str:
    """Create or update the queue-health entry; return created, updated or unchanged."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from bulk_email.tasks import QUEUE_HEALTH

    enabled = every > 0
    with transaction.atomic():
        schedule, _ = IntervalSchedule.objects.get_or_create(
            every=max(every, 1), period=IntervalSchedule.SECONDS
        )
        wanted = {"task": QUEUE_HEALTH, "interval": schedule, "enabled": enabled, "queue": "default"}
        task = PeriodicTask.objects.filter(name=HEALTH_TASK_NAME).first()
        if task is None:
            PeriodicTask.objects.create(name=HEALTH_TASK_NAME, **wanted)
            return "created"
        if all(getattr(task, key) == value for key, value in wanted.items()):
            return "unchanged"
        for key, value in wanted.items():
            setattr(task, key, value)
        task.save()
        return "updated"


class Command(BaseCommand):
    help = "Register bulk_email's periodic tasks in django-celery-beat (celery mode)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--health-interval", type=int, default=300,
            help="Seconds between queue-health reports (0 disables the entry).",
        )
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args, **options) -> None:
        mode = settings.BULK_EMAIL_QUEUE_MODE
        if not modes.get(mode).has_periodic_tasks:
            needed = " or ".join(modes.names_where(lambda other: other.has_periodic_tasks))
            raise CommandError(
                f"setup_periodic_tasks needs BULK_EMAIL_QUEUE_MODE={needed} (beat's schedule), not {mode}"
            )
        every = options["health_interval"]
        if every < 0:
            raise CommandError(f"--health-interval must be 0 or more, got {every}")
        outcome = register_health_task(every)
        self.stdout.write(f"periodic task {HEALTH_TASK_NAME}: {outcome}")
        if options["json"]:
            summary = {"changed": outcome != "unchanged", "name": HEALTH_TASK_NAME,
                       "every": every, "enabled": every > 0}
            self.stdout.write(json.dumps(summary))
