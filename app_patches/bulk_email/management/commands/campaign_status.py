"""``manage.py campaign_status <uuid> [--json]``: the ledger counts of one campaign.

Output: ``campaign <uuid> mode=<mode> recipients=<n> sent=<n> failed=<n> pending=<n>``,
or with --json one JSON object. Exits 1 for an unknown id.
"""
import json
from argparse import ArgumentParser

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from bulk_email.models import Campaign


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
        counts = campaign.counts()
        status = {
            "id": str(campaign.id),
            "mode": campaign.mode,
            "recipients": sum(counts.values()),
            **counts,
        }
        if options["json"]:
            self.stdout.write(json.dumps(status))
        else:
            self.stdout.write(
                f"campaign {status['id']} "
                + " ".join(f"{key}={status[key]}" for key in ("mode", "recipients", "sent", "failed", "pending"))
            )
