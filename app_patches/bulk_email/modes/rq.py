"""rq mode: one django-rq job per batch on the email queue, sent by the rqworker services.

Its settings are django-rq's RQ_QUEUES (the guide's queues, both from the one
BULK_EMAIL_REDIS_URL: the web app and the workers run with different Redis
ACL users simply by having a different URL in their environment files) and
RQ's worker class. Dispatch enqueues and returns at once; the campaign is
marked dispatched only after the enqueue returned, so a failed enqueue
leaves it for ``queue_switch dispatch-held``. The jobs' code is
bulk_email.rq_jobs, imported only inside the methods, so that only an rq
deployment needs rq.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..env import service_url
from .base import RetryRun, retry_queue
from .table import NEEDS

if TYPE_CHECKING:
    from ..models import Campaign
    from ..sending import CampaignRun, Sleep

REDIS_SCHEMES = ("redis", "rediss", "unix")
# The guide's queues and their job timeouts in seconds. The email queue's 600 s is also
# the rqworker role's stop timeout (systemd waits for a running job that long).
RQ_QUEUE_TIMEOUTS = {"default": 360, "email": 600}


def redis_url(env: Mapping[str, str]) -> str:
    """BULK_EMAIL_REDIS_URL, the rq queues' Redis with the client's own ACL user."""
    return service_url(
        env, "BULK_EMAIL_REDIS_URL", "rq", REDIS_SCHEMES, "redis://USER:PASSWORD@127.0.0.1:6379/0"
    )


def rq_queues(url: str) -> dict[str, dict[str, Any]]:
    """django-rq's RQ_QUEUES: the guide's queues, all on the Redis at ``url``."""
    return {
        name: {"URL": url, "DEFAULT_TIMEOUT": timeout} for name, timeout in RQ_QUEUE_TIMEOUTS.items()
    }


class RqMode:
    """The rq queue mode (see the module docstring)."""

    name = "rq"
    needs = NEEDS["rq"]
    has_periodic_tasks = False
    needs_rq_maintenance = True

    def settings(self, env: Mapping[str, str]) -> dict[str, Any]:
        return {
            "RQ_QUEUES": rq_queues(redis_url(env)),
            # rqworker's worker class: RQ's, loading the sending path before it forks (rq_worker.py).
            "RQ": {"WORKER_CLASS": "bulk_email.rq_worker.Worker"},
        }

    def check_submit(self, recipients: int) -> None:
        """Nothing to check: the jobs are spaced by RQ's scheduler, which has no limit to outwait."""

    def dispatch(self, campaign: Campaign, *, wait: bool, sleep: Sleep) -> CampaignRun:
        """Enqueue the campaign's batches; ``wait`` and ``sleep`` are unused (the jobs are spaced)."""
        from ..rq_jobs import enqueue_campaign

        run = enqueue_campaign(campaign)
        campaign.mark_dispatched()
        return run

    def advice(self, campaign: Campaign) -> None:
        """None: a queue mode is what the advice recommends, for any size."""
        return None

    def leftover_line(self, campaign: Campaign, pending: int, stopped: str | None) -> None:
        """None: dispatch only enqueued; the pending deliveries are in the jobs, not left over."""
        return None

    def campaign_extras(self, campaign: Campaign) -> dict[str, int]:
        """The campaign's jobs in the email queue and its registries."""
        from ..rq_jobs import campaign_jobs

        jobs = campaign_jobs(campaign.id)
        return {"queued": jobs.queued, "started": jobs.started, "failed_jobs": jobs.failed}

    def queue_report(self, timeout: float) -> dict[str, Any]:
        """Each queue's counts and the workers (rq_jobs.queue_overview); ``timeout`` is unused."""
        from ..rq_jobs import queue_overview

        return queue_overview()

    def report_lines(self, part: dict[str, Any]) -> list[str]:
        lines = [
            f"rq queue={name} " + " ".join(f"{key}={value}" for key, value in counts.items())
            for name, counts in part["queues"].items()
        ]
        busy = sum(1 for worker in part["workers"] if worker["state"] == "busy")
        lines.append(f"rq workers={len(part['workers'])} busy={busy} idle={len(part['workers']) - busy}")
        return lines

    def drop_failed_entries(self, campaign: Campaign) -> int:
        """Delete the campaign's jobs from the email queue's FailedJobRegistry."""
        from rq.registry import FailedJobRegistry

        from ..rq_jobs import email_queue, failed_campaign_jobs
        from ..sending import campaign_prefix

        registry = FailedJobRegistry(queue=email_queue())
        ids = [job for job in failed_campaign_jobs() if job.startswith(campaign_prefix(campaign.id))]
        for job_id in ids:
            registry.remove(job_id, delete_job=True)
        return len(ids)

    def retry_failed(self, run: RetryRun) -> dict:
        """Every campaign job in the FailedJobRegistry goes back on the queue with fresh retries."""
        from ..rq_jobs import failed_campaign_jobs, requeue_failed

        def requeue(dry_run: bool) -> dict:
            job_ids = failed_campaign_jobs()
            return {"jobs": len(job_ids), "retried": 0 if dry_run else requeue_failed(job_ids)}

        return retry_queue(run, requeue)

    def retry_outcome(self, summary: dict) -> tuple[int, str]:
        return summary["jobs"], "failed jobs"


MODE = RqMode()
