"""celery mode: one Celery task per batch on the email queue, sent by the Celery workers.

Its settings are the CELERY_* ones that <package>/celery.py reads
(``namespace="CELERY"``), the broker URL from BULK_EMAIL_CELERY_BROKER_URL
(see ``celery_settings`` for why each reliability setting has its value),
and apply.py writes the guide's Celery app into the project (modes.table).
Dispatch enqueues and returns at once (countdowns space the batches); the
campaign is marked dispatched only after the enqueue returned, so a failed
enqueue leaves it for ``queue_switch dispatch-held``. The tasks are
bulk_email.tasks, imported only inside the methods (and by Celery's
autodiscovery), so that only a celery deployment needs Celery.
"""
from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..env import at_least, number, service_url
from .base import RetryRun, retry_queue
from .table import NEEDS

if TYPE_CHECKING:
    from ..models import Campaign
    from ..sending import CampaignRun, Sleep

BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")
# The guide's Celery timezone (the school's); beat's crontab entries are read in it.
GUIDE_TIMEZONE = "Australia/Perth"
# The guide's routes and rate limit, for the project's own tasks written after the guide, plus
# this app's tasks. Celery's rate_limit is per worker process, not global: the global cap
# (Gmail's daily limit) is the quota hook's job (bulk_email.quota), never rate_limit's.
EMAIL_TASK_ROUTES = {
    "core.tasks.send_bulk_emails": {"queue": "email"},
    "core.tasks.send_single_email": {"queue": "email"},
    "bulk_email.tasks.send_batch": {"queue": "email"},
}
EMAIL_TASK_ANNOTATIONS = {"core.tasks.send_bulk_emails": {"rate_limit": "10/m"}}


def broker_url(env: Mapping[str, str]) -> str:
    """BULK_EMAIL_CELERY_BROKER_URL, Celery's broker (Redis or RabbitMQ) with the client's own user."""
    return service_url(
        env, "BULK_EMAIL_CELERY_BROKER_URL", "celery", BROKER_SCHEMES,
        "redis://USER:PASSWORD@127.0.0.1:6379/1 or amqp://USER:PASSWORD@127.0.0.1:5672/edupulse",
    )


def celery_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The CELERY_* settings of celery mode, each reliability choice on purpose.

    * acks_late + reject_on_worker_lost: a task's message is acknowledged
      after it ran, and a killed worker child sends it back to the queue;
      with prefetch multiplier 1 a worker holds one message per process
      beyond the ones it runs. A task may thus run twice; the ledger's
      claims (bulk_email.sending) make the second run send nothing twice.
    * visibility_timeout (Redis broker): an unacknowledged message returns
      to the queue this long after delivery, which is how the messages of
      a worker killed with SIGKILL come back. It must outlast the longest
      task plus the longest countdown (retry backoff, batch spacing), or
      the broker redelivers a message still waiting or running, in a loop
      (Celery #2599, #7009); load() enforces that. RabbitMQ needs none: it
      requeues a dead connection's messages at once.
    * autoretry only for DeliveriesPending (transient SMTP errors, outage,
      quota, claims of another runner): permanent errors are in the ledger.
    * results in the Django database (django-celery-results), expiring
      after BULK_EMAIL_CELERY_RESULT_EXPIRES seconds: beat runs Celery's
      backend_cleanup daily.
    """
    time_limit = number(env, "BULK_EMAIL_CELERY_TASK_TIME_LIMIT", 600, int)
    backoff_max = number(env, "BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX", 600, int)
    visibility = number(env, "BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT", 3600, int)
    values: dict[str, Any] = {
        "CELERY_BROKER_URL": broker_url(env),
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
        "CELERY_BROKER_TRANSPORT_OPTIONS": {
            "visibility_timeout": visibility,
            # Sweep for expired unacknowledged messages every 10 s instead of every 100 s.
            "unacked_restore_throttle": 1,
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        "CELERY_RESULT_BACKEND": "django-db",
        "CELERY_RESULT_EXTENDED": True,
        "CELERY_RESULT_EXPIRES": number(env, "BULK_EMAIL_CELERY_RESULT_EXPIRES", 7 * 86400, int),
        "CELERY_ACCEPT_CONTENT": ["json"],
        "CELERY_TASK_SERIALIZER": "json",
        "CELERY_RESULT_SERIALIZER": "json",
        "CELERY_TIMEZONE": env.get("BULK_EMAIL_CELERY_TIMEZONE", "").strip() or GUIDE_TIMEZONE,
        "CELERY_TASK_ROUTES": EMAIL_TASK_ROUTES,
        "CELERY_TASK_ANNOTATIONS": EMAIL_TASK_ANNOTATIONS,
        # Everything not routed goes to "default", which the workers consume (not "celery").
        "CELERY_TASK_DEFAULT_QUEUE": "default",
        "CELERY_TASK_ACKS_LATE": True,
        "CELERY_TASK_REJECT_ON_WORKER_LOST": True,
        "CELERY_TASK_TRACK_STARTED": True,
        "CELERY_TASK_TIME_LIMIT": time_limit,
        # The hard limit kills the pool child and fails the task for good (TimeLimitExceeded, no
        # retry): the soft limit comes first, the task releases its claims and is retried.
        "CELERY_TASK_SOFT_TIME_LIMIT": max(time_limit - max(time_limit // 10, 5), 1),
        "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
        # A task still running when the broker connection drops finishes its sends; its
        # message comes back (acks_late) and the ledger skips what it sent.
        "CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS": False,
        # systemd's stop is one SIGTERM: Celery's warm shutdown, which lets running tasks finish
        # (roles/celery's TimeoutStopSec is longer than the time limit) and hands the reserved,
        # unacknowledged late-ack messages back (kombu restores them when the channel closes).
        # An operator's cold shutdown (SIGQUIT, or a second SIGTERM) is Celery's soft shutdown:
        # running tasks get 10 s, then they are cancelled and their messages go back at once.
        # Not the default stop on purpose: Celery sleeps the whole soft timeout even when the
        # tasks finish sooner, and a cancelled task can be cut between the server's 250 and
        # the ledger's commit (the one window that sends a message twice).
        "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": 10.0,
        "CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE": True,
        "CELERY_BEAT_SCHEDULER": "django_celery_beat.schedulers:DatabaseScheduler",
        "BULK_EMAIL_CELERY_MAX_RETRIES": number(env, "BULK_EMAIL_CELERY_MAX_RETRIES", 8, int),
        "BULK_EMAIL_CELERY_RETRY_BACKOFF": number(env, "BULK_EMAIL_CELERY_RETRY_BACKOFF", 10, int),
        "BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX": backoff_max,
        # RabbitMQ only: its consumer_timeout (rabbitmq.conf, default 30 min), which must match.
        "BULK_EMAIL_CELERY_CONSUMER_TIMEOUT": number(env, "BULK_EMAIL_CELERY_CONSUMER_TIMEOUT", 1800, int),
    }
    values.update(broker_tls(values["CELERY_BROKER_URL"]))
    at_least("BULK_EMAIL_CELERY_TASK_TIME_LIMIT", time_limit, 1)
    at_least("BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX", backoff_max, 0)
    at_least("BULK_EMAIL_CELERY_MAX_RETRIES", values["BULK_EMAIL_CELERY_MAX_RETRIES"], 0)
    at_least("BULK_EMAIL_CELERY_RETRY_BACKOFF", values["BULK_EMAIL_CELERY_RETRY_BACKOFF"], 1)
    at_least("BULK_EMAIL_CELERY_RESULT_EXPIRES", values["CELERY_RESULT_EXPIRES"], 60)
    # The longest countdown is a retry's (<= backoff max); campaigns check their own spacing.
    at_least("BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT", visibility, time_limit + backoff_max + 60)
    # RabbitMQ closes the channel of a consumer holding an unacknowledged message longer than its
    # consumer_timeout; with late acks a task holds its message for its countdown plus its run.
    if urlsplit(values["CELERY_BROKER_URL"]).scheme in ("amqp", "amqps"):
        at_least("BULK_EMAIL_CELERY_CONSUMER_TIMEOUT", values["BULK_EMAIL_CELERY_CONSUMER_TIMEOUT"],
                  time_limit + backoff_max + 60)
    return values


def broker_tls(url: str) -> dict[str, Any]:
    """CELERY_BROKER_USE_SSL for a rediss:// broker: verify the server's certificate.

    redis-py verifies a rediss:// URL by itself (django-rq, rq mode), but
    Celery refuses a rediss:// broker without ssl_cert_reqs and would take
    CERT_NONE if told so. The certificate is checked against the system
    trust store, where roles/edupulse_app puts edupulse_app_extra_ca_certs
    (the CA of Redis's certificate in a multi-host deployment).
    """
    if urlsplit(url).scheme != "rediss":
        return {}
    return {"CELERY_BROKER_USE_SSL": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


class CeleryMode:
    """The celery queue mode (see the module docstring)."""

    name = "celery"
    needs = NEEDS["celery"]
    has_periodic_tasks = True
    needs_rq_maintenance = False

    def settings(self, env: Mapping[str, str]) -> dict[str, Any]:
        return celery_settings(env)

    def check_submit(self, recipients: int) -> None:
        """Refuse now a campaign whose spaced batches would outwait the broker.

        tasks.check_spacing raises at enqueue time, after the rows are written;
        a campaign refused there would stay pending and fail every recovery.
        """
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        from ..tasks import check_spacing

        batches = -(-recipients // settings.BULK_EMAIL_BATCH_SIZE)
        try:
            check_spacing(batches)
        except ImproperlyConfigured as exc:
            raise ValueError(str(exc)) from None

    def dispatch(self, campaign: Campaign, *, wait: bool, sleep: Sleep) -> CampaignRun:
        """Enqueue the campaign's batches; ``wait`` and ``sleep`` are unused (countdowns space them)."""
        from ..tasks import enqueue_campaign

        run = enqueue_campaign(campaign)
        campaign.mark_dispatched()
        return run

    def advice(self, campaign: Campaign) -> None:
        """None: a queue mode is what the advice recommends, for any size."""
        return None

    def leftover_line(self, campaign: Campaign, pending: int, stopped: str | None) -> None:
        """None: dispatch only enqueued; the pending deliveries are in the tasks, not left over."""
        return None

    def campaign_extras(self, campaign: Campaign) -> dict[str, int]:
        """The campaign's tasks by state in django-celery-results."""
        from ..tasks import campaign_tasks

        return campaign_tasks(campaign.id)

    def queue_report(self, timeout: float) -> dict[str, Any]:
        """Queue lengths, what each worker holds (asked with ``timeout``) and the results' states."""
        from ..tasks import queue_overview

        return queue_overview(timeout)

    def report_lines(self, part: dict[str, Any]) -> list[str]:
        lines = [f"celery queue={name} messages={messages}" for name, messages in part["queues"].items()]
        held = {key: sum(worker[key] for worker in part["workers"].values())
                for key in ("active", "reserved", "scheduled")}
        lines.append(f"celery workers={len(part['workers'])} " + " ".join(f"{k}={v}" for k, v in held.items()))
        lines.append("celery results " + " ".join(f"{k}={v}" for k, v in part["results"].items()))
        return lines

    def drop_failed_entries(self, campaign: Campaign) -> int:
        """Delete the campaign's FAILURE send_batch results."""
        from django_celery_results.models import TaskResult

        from ..sending import campaign_prefix
        from ..tasks import SEND_BATCH

        deleted, _ = TaskResult.objects.filter(
            task_name=SEND_BATCH, status="FAILURE", task_id__startswith=campaign_prefix(campaign.id)
        ).delete()
        return deleted

    def retry_failed(self, run: RetryRun) -> dict:
        """Campaigns whose tasks used up their retries are enqueued again from the ledger."""
        from ..tasks import retry_failed_tasks

        return retry_queue(run, retry_failed_tasks)

    def retry_outcome(self, summary: dict) -> tuple[int, str]:
        return summary["jobs"], f"failed tasks ({summary['deliveries']} pending deliveries)"


MODE = CeleryMode()
