"""Switching a live server's queue mode (batch|rq|celery) without losing or doubling an email.

The deployment switches from OLD to NEW like this (roles/edupulse_app):

1. It writes NEW into the *hold file* (BULK_EMAIL_HOLD_FILE). From then on
   campaigns are created in mode NEW and *held*: dispatch() neither sends
   nor enqueues them, it leaves them with dispatched_at NULL. Nothing new
   reaches OLD's queue, which can therefore drain.
2. It waits until ``status(OLD)`` says OLD holds nothing pending; or, after
   stopping OLD's workers, hands OLD's leftovers over with ``move``.
3. It stops OLD's units and deploys NEW (BULK_EMAIL_QUEUE_MODE=NEW).
4. It removes the hold file and runs ``dispatch_held``: every held
   campaign goes out in NEW (enqueued; batch: handed to the batch sender). If the drain timed out it does the same under
   the still-running OLD, so the held campaigns go out in OLD instead.

Why this loses nothing: every recipient is a ledger row that stays pending
until the SMTP server accepted it, and every step above only changes which
sender is asked to send pending rows. Why nothing goes out twice: whatever
sends a row claims it first (sending.claim), so an OLD job still around
after the switch, or a held campaign dispatched twice, only ever finds
rows that are already claimed, sent or failed. The one exception is
``move --release-claims`` while an OLD sender still runs; see ``move``.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from .dispatch import dispatch
from .hold import held_mode
from .models import Campaign, Delivery
from .modes import NAMES

logger = logging.getLogger("bulk_email")


class HoldActive(Exception):
    """dispatch_held was asked to run while the hold file still says a switch is in progress."""


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known queue mode; ValueError naming the known ones otherwise."""
    if mode not in NAMES:
        raise ValueError(f"unknown queue mode {mode!r} (known: {', '.join(NAMES)})")
    return mode


def pending_of(mode: str) -> QuerySet[Delivery]:
    """Pending deliveries of the campaigns of ``mode``."""
    return Delivery.objects.filter(status=Delivery.Status.PENDING, campaign__mode=check_mode(mode))


def held_campaigns() -> QuerySet[Campaign]:
    """Campaigns waiting for dispatch_held: not dispatched, with something left to send, oldest first."""
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING).values("campaign_id")
    return Campaign.objects.filter(dispatched_at__isnull=True, pk__in=pending).order_by("created_at")


def status(mode: str) -> dict:
    """What ``mode`` still has to send, from the ledger (not its queue), plus the held campaigns.

    The ledger rather than the queue because it is the same question for
    every mode (batch has no queue) and because a queue can be empty while
    a retry is scheduled or a lost message (tasks.recover_stranded) is due.
    """
    pending = pending_of(mode)
    return {
        "mode": mode,
        "campaigns": pending.order_by().values("campaign_id").distinct().count(),
        "pending": pending.count(),
        "sending": pending.filter(claimed_at__isnull=False).count(),
        "held": held_campaigns().count(),
    }


def move(from_mode: str, to_mode: str, *, release_claims: bool = False) -> dict:
    """Hand the campaigns of ``from_mode`` that still have pending deliveries to ``to_mode``.

    They become held (dispatched_at NULL), so dispatch_held sends their
    pending deliveries in the new mode; sent and failed rows are never
    touched. Jobs of theirs left in the old queue are harmless if that queue
    ever runs again: they find the rows claimed, sent or failed.

    ``release_claims`` also clears the claims on those pending rows, so the
    new mode sends them at once instead of after BULK_EMAIL_CLAIM_TIMEOUT.
    Only safe once no old sender runs any more (workers stopped, and for
    batch no send_campaign/retry_failed or web request sending): a live
    sender's claim means it is talking to the SMTP server about that very
    recipient, and without the claim the new mode would mail them again.
    """
    check_mode(from_mode)
    check_mode(to_mode)
    if from_mode == to_mode:
        raise ValueError(f"--from-mode and --to-mode are both {from_mode!r}: nothing to move")
    with transaction.atomic():
        # order_by(): Delivery's default ordering would otherwise make DISTINCT per row.
        campaign_ids = list(pending_of(from_mode).order_by().values_list("campaign_id", flat=True).distinct())
        pending = Delivery.objects.filter(campaign_id__in=campaign_ids, status=Delivery.Status.PENDING)
        count = pending.count()
        released = 0
        if release_claims:
            released = pending.filter(claimed_at__isnull=False).update(claimed_by="", claimed_at=None)
        Campaign.objects.filter(pk__in=campaign_ids).update(mode=to_mode, dispatched_at=None)
    logger.warning(
        "batch email queue switch moved campaigns=%d pending=%d from=%s to=%s released_claims=%d",
        len(campaign_ids), count, from_mode, to_mode, released,
    )
    return {"campaigns": len(campaign_ids), "pending": count, "released": released}


def dispatch_held() -> dict:
    """Dispatch every held campaign in the mode this process runs, without sending here.

    rq and celery enqueue them; batch hands them to the batch sender
    (bulk_email.batch_sender), so the playbook that runs this never waits
    for a send, and the drain's ledger counts stay right (the campaigns
    are dispatched batch campaigns with pending rows until the sender is
    done). Refused while the hold file is active: dispatching would only
    hold them again.
    """
    held = held_mode()
    if held is not None:
        raise HoldActive(
            f"the queue mode is still switching to {held} (hold file {settings.BULK_EMAIL_HOLD_FILE}); "
            "remove the hold file first"
        )
    mode = settings.BULK_EMAIL_QUEUE_MODE
    summary: dict = {"campaigns": 0, "pending": 0, "mode": mode, "stopped": None}
    for campaign in held_campaigns():
        pending = campaign.deliveries.filter(status=Delivery.Status.PENDING).count()
        Campaign.objects.filter(pk=campaign.pk).update(mode=mode)
        campaign.mode = mode
        dispatch(campaign, wait=False)
        summary["campaigns"] += 1
        summary["pending"] += pending
    logger.info(
        "batch email queue switch dispatched held campaigns=%d pending=%d mode=%s",
        summary["campaigns"], summary["pending"], mode,
    )
    return summary
