"""Handing a campaign to its queue mode: the one place that differs per mode.

``dispatch(campaign, wait=False)`` returns at once in every mode, so a web
request never sends; ``wait=True`` is for an operator's command, which may
send in its own process.

batch: wait=False marks the campaign dispatched and pokes the batch sender
(bulk_email.batch_sender: a spool file, after the transaction commits);
``manage.py batch_sender`` sends it. wait=True sends it now, in this
process (send_campaign, retry_failed: the operator waits, outside any
web request); what that leaves pending the batch sender sends later,
since the campaign is dispatched.
rq: enqueue one job per batch on the email queue and return at once
(rq_jobs; imported only here, so batch deployments need no rq).
celery: enqueue one task per batch on the email queue and return at once
(tasks; imported only here and by Celery's autodiscovery).
A campaign whose mode this deployment does not run fails loudly instead of
silently sending inline.

While a queue mode switch is in progress (switch.held_mode) nothing is sent
or enqueued: the campaign is held for ``queue_switch dispatch-held``.
Campaign.dispatched_at records the hand-over, and when it is set is what
keeps a campaign from being lost or dispatched twice by a switch: batch
sets it before sending (a send cut short has begun; its leftovers are for
``--resume``/retry_failed, not for dispatch-held), rq and celery after the
enqueue returned (a failed enqueue leaves the campaign for dispatch-held).
"""
import logging
import time
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from .batch_sender import poke
from .models import Campaign
from .sending import CampaignRun, Sleep, send_campaign
from .switch import held_mode

logger = logging.getLogger("bulk_email")


def _send_now(campaign: Campaign, sleep: Sleep) -> CampaignRun:
    return send_campaign(campaign, sleep=sleep)


def _enqueue_rq(campaign: Campaign, sleep: Sleep) -> CampaignRun:
    """Enqueue the campaign's batches; ``sleep`` is unused (the jobs are spaced instead)."""
    from .rq_jobs import enqueue_campaign

    return enqueue_campaign(campaign)


def _enqueue_celery(campaign: Campaign, sleep: Sleep) -> CampaignRun:
    """Enqueue the campaign's batches as Celery tasks; ``sleep`` is unused (countdowns space them)."""
    from .tasks import enqueue_campaign

    return enqueue_campaign(campaign)


DISPATCHERS: dict[str, Callable[[Campaign, Sleep], CampaignRun]] = {
    "batch": _send_now,
    "rq": _enqueue_rq,
    "celery": _enqueue_celery,
}


def dispatcher_for(mode: str) -> Callable[[Campaign, Sleep], CampaignRun]:
    """The dispatcher of ``mode``; ImproperlyConfigured for a mode this version cannot run."""
    try:
        return DISPATCHERS[mode]
    except KeyError:
        raise ImproperlyConfigured(
            f"queue mode {mode!r} is not implemented in this version of bulk_email "
            f"(known: {', '.join(DISPATCHERS)})"
        ) from None


def mark_dispatched(campaign: Campaign) -> None:
    """Record that the campaign was (last) handed to its queue mode."""
    campaign.dispatched_at = timezone.now()
    Campaign.objects.filter(pk=campaign.pk).update(dispatched_at=campaign.dispatched_at)


def hold(campaign: Campaign, mode: str) -> CampaignRun:
    """Keep the campaign for dispatch-held: in the mode being switched to, not dispatched.

    Also for a resumed campaign of the old mode: otherwise the old mode's
    drain would wait for pending rows that nobody is going to send.
    """
    counts = campaign.counts()
    if counts["pending"]:
        campaign.mode, campaign.dispatched_at = mode, None
        Campaign.objects.filter(pk=campaign.pk).update(mode=mode, dispatched_at=None)
    reason = f"the queue mode is switching to {mode}; sent when the switch completes"
    logger.info("batch email campaign=%s held: %s", campaign.id, reason)
    return CampaignRun(campaign_id=str(campaign.id), counts=counts, held=reason)


def hand_to_batch_sender(campaign: Campaign) -> CampaignRun:
    """Poke the batch sender once the caller's transaction has committed; send nothing here.

    On commit, because the sender runs in another process and must see the
    campaign and its dispatched_at when the poke wakes it up.
    """
    campaign_id = campaign.id
    transaction.on_commit(lambda: poke(campaign_id))
    return CampaignRun(campaign_id=str(campaign_id), counts=campaign.counts())


def dispatch(campaign: Campaign, *, wait: bool = False, sleep: Sleep = time.sleep) -> CampaignRun:
    """Hand the pending deliveries of ``campaign`` to its mode, or hold it during a switch.

    ``wait`` only matters in batch mode: False (the default, and what a web
    request must use) hands the campaign to the batch sender, True sends it
    in this process. rq and celery always enqueue and return.
    """
    switching_to = held_mode()
    if switching_to is not None:
        return hold(campaign, switching_to)
    dispatcher = dispatcher_for(campaign.mode)
    if campaign.mode == "batch":
        mark_dispatched(campaign)
        return dispatcher(campaign, sleep) if wait else hand_to_batch_sender(campaign)
    run = dispatcher(campaign, sleep)
    mark_dispatched(campaign)
    return run
