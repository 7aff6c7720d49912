"""celery mode: a campaign becomes one task per batch on the ``email`` queue.

Celery's ``autodiscover_tasks()`` imports this module in celery mode only
(the project's celery.py exists only then), so batch and rq deployments
never need Celery installed.

The task is the same ``send_batch`` call batch mode makes (one SMTP
connection per batch; see rq_jobs for the measurement behind batches
rather than recipients). Batches are spaced by ``countdown``, job k
``k * BULK_EMAIL_BATCH_DELAY`` seconds after submit, so no worker sleeps
while holding a process.

Retries: a batch that left deliveries pending (transient SMTP errors,
an outage, the quota, claims of another runner) is retried with
exponential backoff and jitter (BULK_EMAIL_CELERY_RETRY_BACKOFF[_MAX],
BULK_EMAIL_CELERY_MAX_RETRIES); no other exception is retried (permanent
SMTP errors are in the ledger, a bug should fail loudly). When the retries are used up the task
is FAILURE in django-celery-results with its deliveries still pending:
``manage.py retry_failed`` enqueues them again.

Late acknowledgement means a task can run twice (a killed worker, a
redelivery after the visibility timeout, a broker restart); the ledger's
claims make the second run skip whatever the first one sent.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from billiard.exceptions import SoftTimeLimitExceeded
from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Max, Min, Q
from django.utils import timezone

from .claims import expiry
from .models import Campaign, Delivery
from .sending import (
    CampaignRun,
    DeliveriesPending,
    campaign_prefix,
    chunks,
    job_id,
    pending_batches,
    raise_if_pending,
    send_batch,
)

logger = logging.getLogger("bulk_email")

QUEUE = "email"
SEND_BATCH = "bulk_email.tasks.send_batch"
QUEUE_HEALTH = "bulk_email.tasks.queue_health"


def retry_countdown(retries: int) -> int:
    """Seconds before retry number ``retries + 1``: exponential, capped, with full jitter.

    Read from the settings at run time (Celery's autoretry_for options are
    fixed when the module is imported, before the settings could vary).
    """
    return get_exponential_backoff_interval(
        factor=settings.BULK_EMAIL_CELERY_RETRY_BACKOFF,
        retries=retries,
        maximum=settings.BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX,
        full_jitter=True,
    )


@shared_task(bind=True, name=SEND_BATCH)
def send_batch_task(
    self, campaign_id: str, delivery_ids: list[int], number: int, total: int, waits: int = 0
) -> dict:
    """Send one batch; retry it later (only) while deliveries of it are left pending.

    ``waits`` counts the retries that only waited for another runner's claim to end: a live
    runner finishing the recipient, or a crashed host's claim expiring after
    BULK_EMAIL_CLAIM_TIMEOUT (far longer than the backoff of BULK_EMAIL_CELERY_MAX_RETRIES
    retries). Those are no failed attempts, so they do not use the retry budget up; a batch
    left in FAILURE would keep its recipients pending until someone runs retry_failed.
    """
    campaign = Campaign.objects.get(pk=campaign_id)
    if campaign.mode != "celery":
        # Left in the broker when a queue mode switch handed the campaign to another mode
        # (queue_switch move): that mode sends it now, so this task has nothing to do.
        logger.info("batch email campaign=%s batch=%d/%d skipped: campaign now in %s mode",
                    campaign_id, number, total, campaign.mode)
        return {"sent": 0, "failed": 0, "skipped": campaign.mode}
    runner = f"celery:{self.request.id}"
    try:
        result = send_batch(campaign, delivery_ids, number, total, sleep=time.sleep, runner=runner)
        raise_if_pending(result, campaign_id, number, total)
    except SoftTimeLimitExceeded as exc:
        # Before the hard limit kills the child: send_deliveries has released the claims.
        logger.warning("batch email campaign=%s batch=%d/%d reached the soft time limit; retrying",
                       campaign_id, number, total)
        raise self.retry(
            exc=exc, countdown=retry_countdown(self.request.retries),
            max_retries=settings.BULK_EMAIL_CELERY_MAX_RETRIES + waits, kwargs={"waits": waits},
        ) from exc
    except DeliveriesPending as exc:
        waited = result.busy > 0 and result.deferred == 0 and result.stopped is None
        waits += int(waited)
        raise self.retry(
            exc=exc,
            # A wait backs off over every retry (towards the cap: claims last long); a failed
            # attempt over the failed attempts only.
            countdown=retry_countdown(self.request.retries if waited else max(0, self.request.retries - waits)),
            max_retries=settings.BULK_EMAIL_CELERY_MAX_RETRIES + waits, kwargs={"waits": waits},
        ) from exc
    return {"sent": result.sent, "failed": result.failed}


def check_spacing(batches: int) -> None:
    """Refuse a campaign whose last batch would wait past the broker's visibility timeout.

    A Redis broker redelivers a message that waited (countdown) plus ran
    longer than the visibility timeout, again and again (Celery #2599,
    #7009). Raised before anything is enqueued, so nothing is half-sent.
    """
    if str(settings.CELERY_BROKER_URL).startswith(("redis", "rediss")):
        limit, name = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"], "visibility timeout"
        setting = "BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT"
    else:  # RabbitMQ: a consumer holding a message (countdown, then run) past consumer_timeout
        limit, name = settings.BULK_EMAIL_CELERY_CONSUMER_TIMEOUT, "consumer timeout"
        setting = "BULK_EMAIL_CELERY_CONSUMER_TIMEOUT"
    wait = (batches - 1) * settings.BULK_EMAIL_BATCH_DELAY
    if wait + settings.CELERY_TASK_TIME_LIMIT >= limit:
        raise ImproperlyConfigured(
            f"a campaign of {batches} batches spaced {settings.BULK_EMAIL_BATCH_DELAY} s apart "
            f"waits {wait:.0f} s, which with the task time limit exceeds the broker's {name} "
            f"({limit} s); raise {setting} or BULK_EMAIL_BATCH_SIZE"
        )


def enqueue_batches(campaign: Campaign, batches: list[list[int]]) -> None:
    """Send one task per batch to the email queue, spaced by BULK_EMAIL_BATCH_DELAY."""
    check_spacing(len(batches))
    for index, batch in enumerate(batches):
        send_batch_task.apply_async(
            args=(str(campaign.id), batch, index + 1, len(batches)),
            task_id=job_id(campaign, index + 1),
            countdown=index * settings.BULK_EMAIL_BATCH_DELAY or None,
            queue=QUEUE,
        )


def enqueue_campaign(campaign: Campaign) -> CampaignRun:
    """Enqueue the campaign's pending deliveries, one task per batch; return at once."""
    batches = pending_batches(campaign)
    run = CampaignRun(campaign_id=str(campaign.id), batches=len(batches), counts=campaign.counts())
    enqueue_batches(campaign, batches)
    logger.info(
        "batch email campaign=%s enqueued tasks=%d queue=%s recipients=%d",
        campaign.id, len(batches), QUEUE, sum(len(batch) for batch in batches),
    )
    return run


def stranded_after() -> timedelta:
    """How long a campaign's tasks may all be silent before its unsent recipients count as stranded.

    Longer than any legitimate silence: a task waits at most its countdown
    (kept below the visibility timeout by check_spacing) and runs at most the
    time limit, and a message of a killed worker comes back within the
    visibility timeout.
    """
    seconds = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] + settings.CELERY_TASK_TIME_LIMIT
    return timedelta(seconds=seconds)


def recover_stranded(now: datetime) -> int:
    """Enqueue again the recipients whose task message the broker lost; return how many.

    A message can vanish between the broker and the ledger: kombu's Redis
    transport pops a message and records it as unacknowledged in two steps,
    and the celery scenario saw one popped and never recorded (so neither
    run nor redelivered) when the worker was killed. Such recipients are
    pending, never attempted and unclaimed, in a campaign none of whose
    tasks has changed state for longer than stranded_after(). Enqueuing them
    again is safe even if the old message were still alive: the ledger's
    claims make a recipient go out once whatever runs it.
    """
    from django_celery_results.models import TaskResult

    quiet_since = now - stranded_after()
    # Never attempted and unclaimed (a lost message), or attempted and left under an expired claim
    # (a pool child killed by the hard time limit: FAILURE without a retry).
    unsent = Delivery.objects.filter(
        status=Delivery.Status.PENDING, campaign__mode="celery", campaign__created_at__lt=quiet_since,
    ).filter(Q(attempts=0, claimed_at__isnull=True) | Q(claimed_at__lt=expiry()))
    recovered = 0
    for campaign in Campaign.objects.filter(pk__in=unsent.values("campaign_id")):
        results = TaskResult.objects.filter(task_id__startswith=campaign_prefix(campaign.id))
        last = results.aggregate(last=Max("date_done"))["last"]
        if last is not None and last >= quiet_since:
            continue
        if results.filter(status="FAILURE", result__contains="DeliveriesPending").exists():
            continue  # retries used up: retry_failed's work, not an endless retry every period
        ids = list(unsent.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True))
        try:
            enqueue_batches(campaign, chunks(ids, settings.BULK_EMAIL_BATCH_SIZE))
        except ImproperlyConfigured as exc:  # one campaign must not stop the others' recovery
            logger.error("batch email campaign=%s stranded recipients=%d not re-enqueued: %s",
                         campaign.id, len(ids), exc)
            continue
        recovered += len(ids)
        logger.warning("batch email campaign=%s re-enqueued stranded recipients=%d", campaign.id, len(ids))
    return recovered


@shared_task(name=QUEUE_HEALTH)
def queue_health() -> dict:
    """Periodic task (django-celery-beat): recover stranded recipients, report the backlog.

    Logs a warning when deliveries have waited longer than an hour or a
    claim outlived BULK_EMAIL_CLAIM_TIMEOUT (a sender died mid-batch), the
    two signs that a campaign needs ``retry_failed``. Its results in
    django-celery-results are also how the tests see that beat runs.
    """
    now = timezone.now()
    recovered = recover_stranded(now)
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING)
    oldest = pending.aggregate(created=Min("campaign__created_at"))["created"]
    stale_claims = pending.filter(
        claimed_at__lt=now - timedelta(seconds=settings.BULK_EMAIL_CLAIM_TIMEOUT)
    ).count()
    report = {
        "recovered": recovered,
        "pending": pending.count(),
        "stale_claims": stale_claims,
        "oldest_pending_seconds": int((now - oldest).total_seconds()) if oldest else 0,
    }
    if recovered or stale_claims or report["oldest_pending_seconds"] > 3600:
        logger.warning("batch email queue health: %s", report)
    else:
        logger.info("batch email queue health: %s", report)
    return report


def campaign_tasks(campaign_id: object) -> dict[str, int]:
    """Count the campaign's tasks in django-celery-results by state (started, retrying, failed)."""
    from django_celery_results.models import TaskResult

    rows = TaskResult.objects.filter(task_id__startswith=campaign_prefix(campaign_id))
    return {
        "started": rows.filter(status="STARTED").count(),
        "retrying": rows.filter(status="RETRY").count(),
        "failed_jobs": rows.filter(status="FAILURE").count(),
    }


def failed_campaigns() -> dict[Campaign, list[str]]:
    """Campaigns with FAILURE send_batch tasks, mapped to those tasks' ids."""
    from django_celery_results.models import TaskResult

    failed: dict[str, list[str]] = {}
    for task_id in TaskResult.objects.filter(task_name=SEND_BATCH, status="FAILURE").values_list(
        "task_id", flat=True
    ):
        campaign_id = task_id.split("-", 1)[1].rsplit("-", 2)[0]
        failed.setdefault(campaign_id, []).append(task_id)
    campaigns = {str(pk): campaign for pk, campaign in Campaign.objects.in_bulk(list(failed)).items()}
    return {campaigns[key]: ids for key, ids in failed.items() if key in campaigns}


def retry_failed_tasks(dry_run: bool = False) -> dict[str, int]:
    """Enqueue again the pending deliveries of campaigns whose tasks used up their retries.

    Re-enqueues from the ledger rather than re-sending the failed tasks'
    arguments, so whatever was sent meanwhile is not sent twice; the
    FAILURE results are then deleted so the next call does not repeat it.
    """
    from django_celery_results.models import TaskResult

    summary = {"jobs": 0, "deliveries": 0, "retried": 0}
    for campaign, task_ids in failed_campaigns().items():
        batches = pending_batches(campaign)
        summary["jobs"] += len(task_ids)
        summary["deliveries"] += sum(len(batch) for batch in batches)
        if dry_run:
            continue
        enqueue_batches(campaign, batches)
        TaskResult.objects.filter(task_id__in=task_ids).delete()
        summary["retried"] += len(task_ids)
        logger.info("batch email requeued campaign=%s failed_tasks=%d", campaign.id, len(task_ids))
    return summary


def queue_overview(timeout: float = 1.0) -> dict:
    """Messages waiting in the broker's queues, what each live worker holds, the results' states.

    For ``queue_status``: read-only. The queue depth comes from a passive
    queue declaration (kombu asks the broker, Redis or RabbitMQ, without
    creating anything; a Redis queue that is empty does not exist and counts
    0). Reserved and scheduled tasks (countdowns: spaced batches, retries)
    sit in the workers, not in the queue, so only ``inspect`` can count
    them; ``timeout`` bounds the wait for workers that do not answer.
    """
    from celery import current_app
    from django_celery_results.models import TaskResult
    from kombu.exceptions import ChannelError

    queues: dict[str, int] = {}
    with current_app.connection_for_read() as connection:
        channel = connection.default_channel
        for name in (QUEUE, "default"):
            try:
                queues[name] = channel.queue_declare(queue=name, passive=True).message_count
            except ChannelError:
                queues[name] = 0
                channel = connection.channel()  # AMQP closes a channel after NOT_FOUND
    control = current_app.control
    alive = control.ping(timeout=timeout) or []
    names = sorted(name for reply in alive for name in reply)
    workers = {name: {"active": 0, "reserved": 0, "scheduled": 0} for name in names}
    if names:
        inspect = control.inspect(destination=names, timeout=timeout, limit=len(names))
        for key, method in (("active", inspect.active), ("reserved", inspect.reserved),
                            ("scheduled", inspect.scheduled)):
            for name, tasks in (method() or {}).items():
                workers.setdefault(name, {"active": 0, "reserved": 0, "scheduled": 0})[key] = len(tasks)
    results = TaskResult.objects.filter(task_name=SEND_BATCH)
    return {
        "queues": queues,
        "workers": workers,
        "results": {
            "started": results.filter(status="STARTED").count(),
            "retrying": results.filter(status="RETRY").count(),
            "failed": results.filter(status="FAILURE").count(),
        },
    }
