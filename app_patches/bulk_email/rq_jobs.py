"""rq mode: a campaign becomes one job per batch on django-rq's ``email`` queue.

Imported only in rq mode (dispatch and the commands import it lazily), so a
batch deployment never needs rq installed.

Why one job per batch and not per recipient: a job is the same
``send_deliveries(ids)`` call batch mode makes, over one SMTP connection,
so a batch costs one connect/EHLO/STARTTLS/AUTH instead of one per message
and one Redis round trip of job bookkeeping instead of twenty;
bench/rq_job_granularity.py measures the difference (see its docstring).

Why the batch delay is spacing of the jobs: job k (0-based) is enqueued
``k * BULK_EMAIL_BATCH_DELAY`` seconds later with ``enqueue_in``, so a worker
never sleeps while holding the queue, and several workers together still
respect the provider's rate. This needs a worker started with
``--with-scheduler`` (roles/rqworker runs instance 1 that way); with a delay
of 0 the jobs are enqueued directly.

Retries: a job that leaves deliveries of its batch pending (transient SMTP
errors beyond the in-job attempts, an outage, the quota, or deliveries
claimed by another runner) raises DeliveriesPending, and RQ runs it again
after BULK_EMAIL_RQ_RETRY_INTERVALS. Permanent errors are in the ledger and
do not fail the job. When the retries are used up the job sits in the email
queue's FailedJobRegistry while its deliveries stay pending in the ledger:
``manage.py retry_failed`` puts it back. A re-run only ever sends what is
still pending, so running a job twice (RQ issues #2015, #2424) is harmless.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import django_rq
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from rq import Queue, Retry, get_current_job
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp

from .claims import expiry
from .models import Campaign, Delivery
from .sending import (
    JOB_PREFIX,
    CampaignRun,
    campaign_prefix,
    job_id,
    pending_batches,
    raise_if_pending,
    send_batch,
)

logger = logging.getLogger("bulk_email")

QUEUE = "email"


def email_queue() -> Queue:
    """The django-rq queue the campaign jobs go to (RQ_QUEUES['email'])."""
    return django_rq.get_queue(QUEUE)


def retry_policy() -> Retry:
    """RQ's retry for campaign jobs, from BULK_EMAIL_RQ_RETRY_INTERVALS."""
    intervals = list(settings.BULK_EMAIL_RQ_RETRY_INTERVALS)
    return Retry(max=max(len(intervals), 1), interval=intervals or 0)


def send_batch_job(campaign_id: str, delivery_ids: list[int], number: int, total: int) -> dict:
    """The rq job: send one batch; raise DeliveriesPending if any of it is left pending."""
    campaign = Campaign.objects.get(pk=campaign_id)
    if campaign.mode != "rq":
        # Left in Redis when a queue mode switch handed the campaign to another mode
        # (queue_switch move): that mode sends it now, so this job has nothing to do.
        logger.info("batch email campaign=%s batch=%d/%d skipped: campaign now in %s mode",
                    campaign_id, number, total, campaign.mode)
        return {"sent": 0, "failed": 0, "skipped": campaign.mode}
    job = get_current_job()
    runner = f"rq:{job.id}" if job else None
    result = send_batch(campaign, delivery_ids, number, total, sleep=time.sleep, runner=runner)
    raise_if_pending(result, campaign_id, number, total)
    return {"sent": result.sent, "failed": result.failed}


def enqueue_campaign(campaign: Campaign) -> CampaignRun:
    """Enqueue one job per batch of the campaign's pending deliveries; return at once.

    The run's counts are the ledger at submit time (everything pending),
    taken before the first job can start.
    """
    batches = pending_batches(campaign)
    run = CampaignRun(campaign_id=str(campaign.id), batches=len(batches), counts=campaign.counts())
    queue = email_queue()
    for index, batch in enumerate(batches):
        enqueue_batch(queue, campaign, batch, index + 1, len(batches), delay=index * settings.BULK_EMAIL_BATCH_DELAY)
    logger.info(
        "batch email campaign=%s enqueued jobs=%d queue=%s recipients=%d",
        campaign.id, len(batches), QUEUE, sum(len(batch) for batch in batches),
    )
    return run


def enqueue_batch(
    queue: Queue, campaign: Campaign, ids: Sequence[int], number: int, total: int, *, delay: float
) -> Job:
    """Enqueue one batch job now, or ``delay`` seconds from now (needs --with-scheduler)."""
    options = {
        "args": (str(campaign.id), list(ids), number, total),
        "job_id": job_id(campaign, number),
        "retry": retry_policy(),
        "description": f"bulk email campaign {campaign.id} batch {number}/{total}",
    }
    if delay > 0:
        return queue.enqueue_in(timedelta(seconds=delay), send_batch_job, **options)
    return queue.enqueue(send_batch_job, **options)


@dataclass
class JobCounts:
    """Jobs of one campaign in the email queue's list and registries."""

    queued: int = 0  # waiting in the queue or scheduled (spaced batches, retries)
    started: int = 0  # taken by a worker (its intermediate list) or running
    failed: int = 0


def taken_job_ids(queue: Queue) -> list[str]:
    """Ids of the jobs a worker has moved out of the queue but not yet into StartedJobRegistry."""
    ids = queue.connection.lrange(queue.intermediate_queue_key, 0, -1)
    return [job.decode() if isinstance(job, bytes) else job for job in ids]


def campaign_jobs(campaign_id: object) -> JobCounts:
    """Count the campaign's jobs by id prefix (ids only: no job is fetched).

    A worker takes a job in two steps: BLMOVE from the queue into the queue's
    intermediate list, then (prepare_job_execution) into StartedJobRegistry. A job
    between the two is in neither; counting the intermediate list as started keeps
    it from vanishing from the status for that moment. A job may be in both (a
    worker of several queues leaves it in the list), hence the set of ids.
    """
    queue = email_queue()
    prefix = campaign_prefix(campaign_id)

    def count(ids: list[str]) -> int:
        return sum(1 for job in ids if job.startswith(prefix))

    running = [job.split(":", 1)[0] for job in StartedJobRegistry(queue=queue).get_job_ids()]
    scheduled = ScheduledJobRegistry(queue=queue)
    return JobCounts(
        queued=count(queue.get_job_ids()) + count(scheduled.get_job_ids()),
        started=count(sorted(set(taken_job_ids(queue)) | set(running))),
        failed=count(FailedJobRegistry(queue=queue).get_job_ids()),
    )


def failed_campaign_jobs() -> list[str]:
    """Ids of bulk_email jobs in the email queue's FailedJobRegistry (oldest first)."""
    registry = FailedJobRegistry(queue=email_queue())
    return [job for job in registry.get_job_ids() if job.startswith(f"{JOB_PREFIX}-")]


def requeue_failed(job_ids: Sequence[str]) -> int:
    """Put failed campaign jobs back on the queue with a fresh set of retries.

    Fresh retries because a job lands here after using all of them; without
    a reset, the next transient error would send it straight back.
    """
    queue = email_queue()
    registry = FailedJobRegistry(queue=queue)
    requeued = 0
    for identifier in job_ids:
        job = queue.fetch_job(identifier)
        if job is None:
            registry.remove(identifier)
            continue
        job.retries_left = retry_policy().max
        registry.requeue(job)
        requeued += 1
        logger.info("batch email requeued failed job=%s", identifier)
    return requeued


def recover_abandoned(timestamp: float | None = None) -> int:
    """Give the jobs of killed workers back to RQ; return how many were found.

    A worker killed with SIGKILL (or by the OOM killer) leaves its job in the
    StartedJobRegistry. RQ notices only when the job's heartbeat entry has
    expired (about 90 s after the last beat) *and* a worker runs its
    registry maintenance, which rqworker does every 10 minutes and
    django-rq's command cannot make more often. Run from a timer every
    minute, this bounds the wait: the registry cleanup retries an abandoned
    job that has retries left (its deliveries still pending in the ledger)
    and moves the others to the FailedJobRegistry, where retry_failed finds
    them. Nothing here sends mail, so running it any number of times is safe.
    """
    found = 0
    for name in settings.RQ_QUEUES:
        registry = StartedJobRegistry(queue=django_rq.get_queue(name))
        expired = registry.get_expired_job_ids(timestamp)
        if expired:
            registry.cleanup(timestamp)
            found += len(expired)
            logger.warning("batch email recovered abandoned jobs queue=%s jobs=%s", name, ",".join(expired))
    return found


# A campaign dispatched this recently may still be enqueuing its jobs (on commit): leave it.
LOST_GRACE = timedelta(seconds=60)


def live_job_ids() -> list[str]:
    """Ids of the email queue's jobs that will still run: queued, started, scheduled, deferred.

    Failed jobs do not count as live, but a campaign with one is left to
    retry_failed (see recover_lost_batches).
    """
    queue = email_queue()
    ids = list(queue.get_job_ids()) + taken_job_ids(queue)
    for registry in (StartedJobRegistry, ScheduledJobRegistry, DeferredJobRegistry):
        ids += registry(queue=queue).get_job_ids(cleanup=False)
    return [job.split(":", 1)[0] for job in ids]  # started entries are "<job id>:<execution>"


def recover_lost_batches(now: datetime | None = None) -> int:
    """Enqueue again the pending deliveries of rq campaigns none of whose jobs exists; return how many.

    Redis can lose jobs without a trace in the ledger: a crash without
    persistence, a restore from an older backup, django-rq's "Empty queue",
    an enqueue that failed half way. Such a campaign is dispatched in rq
    mode, has pending deliveries nobody holds (unclaimed or expired), and no
    queued, started, scheduled or deferred job in Redis; a campaign with a
    failed job is retry_failed's (re-enqueuing it here every minute would
    make RQ's retry limit endless). Enqueuing a batch that does have a job
    somewhere is harmless: the claims let one runner send each delivery.
    """
    now = now or timezone.now()
    unsent = Delivery.objects.filter(
        status=Delivery.Status.PENDING, campaign__mode="rq",
        campaign__dispatched_at__lt=now - LOST_GRACE,
    ).filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=expiry()))
    campaigns = list(Campaign.objects.filter(pk__in=unsent.values("campaign_id")))
    if not campaigns:
        return 0
    live = live_job_ids()
    failed = failed_campaign_jobs()
    recovered = 0
    queue = email_queue()
    for campaign in campaigns:
        prefix = campaign_prefix(campaign.id)
        if any(job.startswith(prefix) for job in (*live, *failed)):
            continue
        batches = pending_batches(campaign)
        for index, batch in enumerate(batches):
            enqueue_batch(queue, campaign, batch, index + 1, len(batches),
                          delay=index * settings.BULK_EMAIL_BATCH_DELAY)
        count = sum(len(batch) for batch in batches)
        recovered += count
        logger.warning("batch email campaign=%s re-enqueued recipients=%d (its jobs were lost)",
                       campaign.id, count)
    return recovered


def enqueue_due_scheduled() -> int:
    """Move due scheduled jobs (spaced batches, retries) to their queues; return how many.

    RQ's scheduler runs inside one worker (``--with-scheduler``) and holds a
    lock per queue, refreshed every second and expiring 61 s after its
    holder died. A worker restarted after a SIGKILL finds the lock still
    held and tries again only at its next maintenance, up to 10 minutes
    later; meanwhile every spaced batch and every retry waits. This takes
    the same lock, so it does nothing while a live scheduler holds it.
    """
    scheduler = RQScheduler(list(settings.RQ_QUEUES), connection=email_queue().connection)
    acquired = scheduler.acquire_locks()
    if not acquired:
        return 0
    try:
        now = current_timestamp()
        due = sum(
            len(ScheduledJobRegistry(queue=django_rq.get_queue(name)).get_jobs_to_schedule(now))
            for name in acquired
        )
        scheduler.enqueue_scheduled_jobs()
    finally:
        scheduler.release_locks()
    if due:
        logger.warning("batch email enqueued due scheduled jobs=%d (no live scheduler)", due)
    return due


def queue_overview() -> dict:
    """Depth of every RQ_QUEUES queue and its registries, and the registered workers.

    For ``queue_status``: read-only on purpose. RQ's own ``registry.count``,
    ``get_job_ids()`` and ``Worker.all()`` clean up as they read (they move
    expired started jobs to the failed registry, drop dead workers' keys),
    so a status probe would change what it reports and race the maintenance
    timer; this reads the sorted sets and hashes as they are.
    """
    from rq import worker_registration

    queues: dict[str, dict[str, int]] = {}
    workers: dict[str, dict] = {}
    for name in settings.RQ_QUEUES:
        queue = django_rq.get_queue(name)
        registries = {
            "scheduled": ScheduledJobRegistry, "started": StartedJobRegistry,
            "failed": FailedJobRegistry, "deferred": DeferredJobRegistry,
            "finished": FinishedJobRegistry,
        }
        counts = {"queued": queue.count}
        for key, registry in registries.items():
            counts[key] = registry(queue=queue).get_job_count(cleanup=False)
        queues[name] = counts
        connection = queue.connection
        for key in sorted(worker_registration.get_keys(queue=queue)):
            if key in workers or not connection.exists(key):
                continue  # another queue's listing, or a dead worker's leftover (not alive)
            state = connection.hget(key, "state")
            heartbeat = connection.hget(key, "last_heartbeat")
            workers[key] = {
                "name": key.removeprefix("rq:worker:"),
                "state": state.decode() if isinstance(state, bytes) else state,
                "last_heartbeat": heartbeat.decode() if isinstance(heartbeat, bytes) else heartbeat,
                "queues": [],
            }
        for key in worker_registration.get_keys(queue=queue):
            if key in workers:
                workers[key]["queues"].append(name)
    return {"queues": queues, "workers": list(workers.values())}
