"""Trying again what is stuck: ``manage.py retry_failed`` and the campaign page's retry button.

One function for both, so the button does exactly what the operator's
command does. Per queue mode (each one's ``retry_failed`` in bulk_email.modes):

rq: every campaign job in the email queue's FailedJobRegistry (retries used
up, its deliveries still pending in the ledger) goes back on the queue with
a fresh set of retries.
celery: the campaigns whose send_batch tasks used up their retries get their
pending deliveries enqueued again, from the ledger (tasks.retry_failed_tasks).
batch: the pending deliveries of dispatched-or-not batch campaigns are sent:
in this process with ``wait=True`` (the command: the operator waits, like
``send_campaign --resume``), by the batch sender with ``wait=False`` (the
web page: a request never sends).

``include_failed`` first turns *failed* deliveries (permanent errors: a
refused recipient, a full mailbox the provider reported as 5xx) back to
pending, keeping their last error and attempt count, for when the cause
was fixed (the address corrected at the provider, a relay rule changed).
Those campaigns are then dispatched afresh; in rq/celery their failed jobs
or results are dropped first, so they are not retried a second time.

For one campaign (the button): revive its failed deliveries if asked, drop
its failed jobs/results, and dispatch its pending deliveries in the mode
this deployment runs. A second click, or a job still scheduled, can at
worst run a batch twice: the ledger's claims send each recipient once.
"""
from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet

from . import modes
from .dispatch import dispatch
from .models import Campaign, Delivery
from .modes import RetryRun


def revive(failed: QuerySet[Delivery]) -> int:
    """Turn failed deliveries back to pending (unclaimed); their last error stays for the page."""
    return failed.update(status=Delivery.Status.PENDING, claimed_by="", claimed_at=None)


def retry_campaign(campaign: Campaign, *, include_failed: bool = False, dry_run: bool = False,
                   wait: bool = False) -> dict:
    """Re-queue one campaign's pending (and with ``include_failed`` failed) deliveries.

    Summary: {"mode", "campaigns" (0 or 1), "deliveries" (re-queued), "revived" (failed made
    pending), "retried" (0 or 1), "held" (a queue mode switch holds it instead)}.
    """
    mode = settings.BULK_EMAIL_QUEUE_MODE
    failed = campaign.deliveries.filter(status=Delivery.Status.FAILED)
    revived = failed.count() if include_failed else 0
    pending = campaign.deliveries.filter(status=Delivery.Status.PENDING).count() + revived
    summary = {"mode": mode, "campaigns": int(pending > 0), "deliveries": pending, "revived": revived,
               "retried": 0, "held": False}
    if dry_run or not pending:
        return summary
    if include_failed:
        revive(failed)
    modes.get(mode).drop_failed_entries(campaign)
    if campaign.mode != mode:
        # A campaign of a mode this deployment no longer runs: its queue is gone (a switch).
        Campaign.objects.filter(pk=campaign.pk).update(mode=mode)
        campaign.mode = mode
    run = dispatch(campaign, wait=wait)
    summary["retried"] = 1
    summary["held"] = run.held is not None
    return summary


def retry_failed(*, include_failed: bool = False, dry_run: bool = False, wait: bool = False) -> dict:
    """The command's retry over every campaign of the deployment's mode; see the module doc.

    Summary: rq {"jobs", "retried"}, celery {"jobs", "deliveries", "retried"}, batch
    {"campaigns", "deliveries", "retried"} (+ "stopped" when a run stopped early); with
    ``include_failed`` plus "revived" (failed made pending) and, in rq/celery,
    "campaigns_revived" (dispatched afresh for that). With ``dry_run`` nothing changes.
    """
    mode = settings.BULK_EMAIL_QUEUE_MODE
    failed = Delivery.objects.filter(status=Delivery.Status.FAILED, campaign__mode=mode)
    revived = failed.count() if include_failed else 0
    revived_campaigns: list[Campaign] = []
    if include_failed:
        revived_campaigns = list(
            Campaign.objects.filter(pk__in=failed.values("campaign_id")).order_by("created_at")
        )
        if not dry_run:
            revive(failed)
    return modes.get(mode).retry_failed(RetryRun(
        dry_run=dry_run, wait=wait, include_failed=include_failed, revived=revived,
        revived_campaigns=revived_campaigns,
        dispatch=lambda campaign: dispatch(campaign, wait=wait),
        retry_campaign=lambda campaign: retry_campaign(campaign, wait=wait),
    ))
