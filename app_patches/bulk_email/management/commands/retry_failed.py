"""``manage.py retry_failed [--dry-run] [--json]``: try again what is stuck, per queue mode.

rq mode: the guide's "manually retry failed tasks": every campaign job in the
email queue's FailedJobRegistry (retries used up, its deliveries still
pending in the ledger) goes back on the queue with a fresh set of retries.

celery mode: the campaigns whose send_batch tasks used up their retries
(FAILURE in django-celery-results) get their pending deliveries enqueued
again, from the ledger, and those results are deleted.

batch mode: there are no jobs; the pending deliveries of batch campaigns
(left by an SMTP outage, the quota or a stopped run) are sent now, in this
process, exactly like ``send_campaign --resume`` for each such campaign.

Output: ``retried <n> <what>`` (``would retry`` with --dry-run, which changes
nothing) or ``nothing to retry``; --json adds one JSON object as the last line:
{"mode", "dry_run", "jobs" (rq), "jobs" + "deliveries" (celery) or "campaigns" +
"deliveries" (batch), "retried"}.
"""
import json
from argparse import ArgumentParser

from django.conf import settings
from django.core.management.base import BaseCommand

from bulk_email.dispatch import dispatch
from bulk_email.models import Campaign, Delivery


def pending_batch_campaigns() -> list[Campaign]:
    """Batch campaigns that still have pending deliveries, oldest first."""
    ids = (
        Delivery.objects.filter(status=Delivery.Status.PENDING, campaign__mode="batch")
        .values_list("campaign_id", flat=True)
        .distinct()
    )
    return list(Campaign.objects.filter(pk__in=ids).order_by("created_at"))


class Command(BaseCommand):
    help = "Re-enqueue failed campaign jobs (rq, celery) or re-send pending deliveries (batch)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report only, change nothing.")
        parser.add_argument("--json", action="store_true", help="Also print a JSON summary line.")

    def handle(self, *args, **options) -> None:
        mode = settings.BULK_EMAIL_QUEUE_MODE
        if mode == "rq":
            summary = self._retry_rq(options["dry_run"])
            what = "failed jobs"
        elif mode == "celery":
            from bulk_email.tasks import retry_failed_tasks

            summary = retry_failed_tasks(options["dry_run"])
            what = f"failed tasks ({summary['deliveries']} pending deliveries)"
        else:
            summary = self._retry_batch(options["dry_run"])
            what = f"campaigns ({summary['deliveries']} pending deliveries)"
        count = summary["campaigns"] if mode == "batch" else summary["jobs"]
        if not count:
            self.stdout.write("nothing to retry")
        else:
            verb = "would retry" if options["dry_run"] else "retried"
            self.stdout.write(f"{verb} {count} {what}")
        if options["json"]:
            self.stdout.write(json.dumps({"mode": mode, "dry_run": options["dry_run"], **summary}))

    def _retry_rq(self, dry_run: bool) -> dict:
        from bulk_email.rq_jobs import failed_campaign_jobs, requeue_failed

        job_ids = failed_campaign_jobs()
        retried = 0 if dry_run else requeue_failed(job_ids)
        return {"jobs": len(job_ids), "retried": retried}

    def _retry_batch(self, dry_run: bool) -> dict:
        campaigns = pending_batch_campaigns()
        deliveries = sum(campaign.counts()["pending"] for campaign in campaigns)
        retried = 0
        if not dry_run:
            for campaign in campaigns:
                run = dispatch(campaign)
                retried += 1
                if run.stopped:
                    self.stdout.write(f"campaign {campaign.id} stopped: {run.stopped}")
                    break
        return {"campaigns": len(campaigns), "deliveries": deliveries, "retried": retried}
