"""Handing a campaign to its queue mode, or holding it while the queue mode is switching.

``dispatch(campaign, wait=False)`` returns at once in every mode, so a web
request never sends; ``wait=True`` is for an operator's command, which may
send in its own process (batch mode only: rq and celery always enqueue).
What each mode does is its module's (bulk_email.modes); a campaign whose
mode this version does not know fails loudly instead of silently sending
inline.

While a queue mode switch is in progress (hold.held_mode) nothing is sent
or enqueued: the campaign is held for ``queue_switch dispatch-held``.
Campaign.dispatched_at records the hand-over, and when it is set is what
keeps a campaign from being lost or dispatched twice by a switch: batch
sets it before sending (a send cut short has begun; its leftovers are for
``--resume``/retry_failed, not for dispatch-held), rq and celery after the
enqueue returned (a failed enqueue leaves the campaign for dispatch-held).
"""
import logging
import time

from . import modes
from .hold import held_mode
from .models import Campaign
from .sending import CampaignRun, Sleep

logger = logging.getLogger("bulk_email")


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


def dispatch(campaign: Campaign, *, wait: bool = False, sleep: Sleep = time.sleep) -> CampaignRun:
    """Hand the pending deliveries of ``campaign`` to its mode, or hold it during a switch.

    ``wait`` only matters in batch mode: False (the default, and what a web
    request must use) hands the campaign to the batch sender, True sends it
    in this process. rq and celery always enqueue and return.
    """
    switching_to = held_mode()
    if switching_to is not None:
        return hold(campaign, switching_to)
    return modes.get(campaign.mode).dispatch(campaign, wait=wait, sleep=sleep)
