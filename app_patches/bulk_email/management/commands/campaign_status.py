"""``manage.py campaign_status <uuid> [--json]``: the ledger counts of one campaign.

Output: ``campaign <uuid> mode=<mode> recipients=<n> sent=<n> failed=<n> pending=<n> sending=<n>``
and, for an rq campaign, `` queued=<n> started=<n> failed_jobs=<n>``, for a celery campaign
`` started=<n> retrying=<n> failed_jobs=<n>`` (those only while the deployment runs the
campaign's mode); or with --json one JSON object with the same
keys plus "dispatched" (false while the campaign is held by a queue mode switch, see
bulk_email.switch). Exits 1 for an unknown id.

pending counts every delivery not yet sent or failed, so "pending == 0" means done;
sending is the part of it a runner has claimed right now. queued (waiting or scheduled),
started and failed_jobs count the campaign's jobs in the rq email queue and its registries;
for celery, the campaign's tasks by state in django-celery-results (a broker cannot count the
messages of one campaign cheaply, so there is no "queued": pending says what is left).
"""
import json
from argparse import ArgumentParser

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from bulk_email import modes
from bulk_email.models import Campaign

TEXT_KEYS = (
    "mode", "recipients", "sent", "failed", "pending", "sending",
    "queued", "started", "retrying", "failed_jobs",
)


def campaign_status(campaign: Campaign) -> dict:
    """Ledger counts, plus the campaign's jobs (rq) or tasks (celery) when it is queued."""
    counts = campaign.counts()
    status = {
        "id": str(campaign.id),
        "mode": campaign.mode,
        "recipients": sum(counts.values()),
        **counts,
        "sending": campaign.sending(),
        "dispatched": campaign.dispatched_at is not None,
    }
    if campaign.mode != settings.BULK_EMAIL_QUEUE_MODE:
        # A campaign of a mode this deployment no longer runs (a queue mode switch): its queue
        # is gone, and its client library may be too; the ledger still has the whole answer.
        return status
    status.update(modes.get(campaign.mode).campaign_extras(campaign))
    return status


class Command(BaseCommand):
    help = "Show how many deliveries of a campaign are sent, failed and pending."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("campaign_id")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options) -> None:
        try:
            campaign = Campaign.objects.get(pk=options["campaign_id"])
        except (Campaign.DoesNotExist, ValidationError):
            raise CommandError(f"unknown campaign {options['campaign_id']}") from None
        status = campaign_status(campaign)
        if options["json"]:
            self.stdout.write(json.dumps(status))
        else:
            self.stdout.write(
                f"campaign {status['id']} "
                + " ".join(f"{key}={status[key]}" for key in TEXT_KEYS if key in status)
            )
