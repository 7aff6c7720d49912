"""Handing a campaign to its queue mode: the one place that differs per mode.

batch: send now, in this process (the caller waits).
rq: enqueue one job per batch on the email queue and return at once
(rq_jobs; imported only here, so batch deployments need no rq).
celery: enqueue one task per batch on the email queue and return at once
(tasks; imported only here and by Celery's autodiscovery).
A campaign whose mode this deployment does not run fails loudly instead of
silently sending inline.
"""
import time
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from .models import Campaign
from .sending import CampaignRun, Sleep, send_campaign


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


def dispatch(campaign: Campaign, *, sleep: Sleep = time.sleep) -> CampaignRun:
    """Send (batch) or enqueue (rq/celery) the pending deliveries of ``campaign``."""
    try:
        dispatcher = DISPATCHERS[campaign.mode]
    except KeyError:
        raise ImproperlyConfigured(
            f"queue mode {campaign.mode!r} is not implemented in this version of bulk_email "
            f"(known: {', '.join(DISPATCHERS)})"
        ) from None
    return dispatcher(campaign, sleep)
