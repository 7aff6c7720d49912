"""batch mode: no queue; a campaign is sent by ``manage.py batch_sender`` or by the operator's command.

Dispatch with wait=False (the default, and what a web request must use)
marks the campaign dispatched and pokes the batch sender (a spool file,
after the transaction commits: bulk_email.batch_sender). wait=True sends it
now, in this process (send_campaign, retry_failed: the operator waits,
outside any web request); what that leaves pending the batch sender sends
later, since the campaign is dispatched. Either way dispatched_at is set
*before* sending: a send cut short has begun, and its leftovers are for
``--resume``/retry_failed, not for ``queue_switch dispatch-held``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .base import RetryRun
from .table import NEEDS

if TYPE_CHECKING:
    from ..models import Campaign
    from ..sending import CampaignRun, Sleep

# The guide: "more than 50 recipients at once: use the rq mode".
GUIDE_RQ_THRESHOLD = 50


def pending_batch_campaigns() -> list[Campaign]:
    """Batch campaigns that still have pending deliveries, oldest first."""
    from ..models import Campaign, Delivery

    ids = (
        Delivery.objects.filter(status=Delivery.Status.PENDING, campaign__mode="batch")
        .values_list("campaign_id", flat=True)
        .distinct()
    )
    return list(Campaign.objects.filter(pk__in=ids).order_by("created_at"))


class BatchMode:
    """The batch queue mode (see the module docstring)."""

    name = "batch"
    needs = NEEDS["batch"]
    has_periodic_tasks = False
    needs_rq_maintenance = False

    def settings(self, env: Mapping[str, str]) -> dict[str, Any]:
        """None of its own: BULK_EMAIL_BATCH_SPOOL_DIR is read with the common settings."""
        return {}

    def check_submit(self, recipients: int) -> None:
        """Nothing to check: the sender spaces its batches itself, with no broker to outwait."""

    def dispatch(self, campaign: Campaign, *, wait: bool, sleep: Sleep) -> CampaignRun:
        campaign.mark_dispatched()
        return self.send_now(campaign, sleep) if wait else self.hand_to_batch_sender(campaign)

    def send_now(self, campaign: Campaign, sleep: Sleep) -> CampaignRun:
        """Send the campaign's pending deliveries in this process."""
        from ..sending import send_campaign

        return send_campaign(campaign, sleep=sleep)

    def hand_to_batch_sender(self, campaign: Campaign) -> CampaignRun:
        """Poke the batch sender once the caller's transaction has committed; send nothing here.

        On commit, because the sender runs in another process and must see the
        campaign and its dispatched_at when the poke wakes it up.
        """
        from django.db import transaction

        from ..batch_sender import poke
        from ..sending import CampaignRun

        campaign_id = campaign.id
        transaction.on_commit(lambda: poke(campaign_id))
        return CampaignRun(campaign_id=str(campaign_id), counts=campaign.counts())

    def advice(self, campaign: Campaign) -> str | None:
        """Above the guide's threshold, the queue modes: advice, not a refusal (this mode sends
        any size, only slower and with its retries left to the batch sender's timer)."""
        total = campaign.deliveries.count()
        if total <= GUIDE_RQ_THRESHOLD:
            return None
        return (
            f"Batch mode: {total} recipients; for more than {GUIDE_RQ_THRESHOLD} the rq or celery mode "
            "sends faster and retries in the background (site.yml -e queue_mode=rq)"
        )

    def leftover_line(self, campaign: Campaign, pending: int, stopped: str | None) -> str:
        """A waited-for dispatch sent in the caller's process; the campaign is dispatched, so the
        batch sender sends what that left pending, and ``--resume`` does it now."""
        reason = stopped or "transient SMTP errors, or being sent by another runner"
        return (
            f"{pending} deliveries left pending ({reason}): the batch sender "
            "(edupulse-batch-sender.timer) sends them within a minute; "
            f"`send_campaign --resume {campaign.id}` sends them now"
        )

    def campaign_extras(self, campaign: Campaign) -> dict[str, int]:
        """No queue: the ledger's counts are the whole answer."""
        return {}

    def queue_report(self, timeout: float) -> None:
        """No queue to report on."""
        return None

    def report_lines(self, part: dict[str, Any]) -> list[str]:
        return []

    def drop_failed_entries(self, campaign: Campaign) -> int:
        """No queue, so no failed jobs to drop."""
        return 0

    def retry_failed(self, run: RetryRun) -> dict:
        """Dispatch every batch campaign with pending deliveries (the revived ones among them).

        A dry run counts the revived deliveries and campaigns as if they were
        pending already. A run that stops early (quota, outage) ends the retry.
        """
        campaigns = pending_batch_campaigns()
        if run.dry_run:
            known = {campaign.pk for campaign in campaigns}
            campaigns += [campaign for campaign in run.revived_campaigns if campaign.pk not in known]
        extra = run.revived if run.dry_run else 0
        deliveries = sum(campaign.counts()["pending"] for campaign in campaigns) + extra
        summary: dict = {"campaigns": len(campaigns), "deliveries": deliveries, "retried": 0}
        if not run.dry_run:
            for campaign in campaigns:
                result = run.dispatch(campaign)
                summary["retried"] += 1
                if result.stopped:
                    summary["stopped"] = f"campaign {campaign.id} stopped: {result.stopped}"
                    break
        return {**summary, "revived": run.revived} if run.include_failed else summary

    def retry_outcome(self, summary: dict) -> tuple[int, str]:
        return summary["campaigns"], f"campaigns ({summary['deliveries']} pending deliveries)"


MODE = BatchMode()
