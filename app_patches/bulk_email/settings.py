"""Settings of the bulk_email app, read from the environment.

The project's settings.py star-imports this module at its very end (the
block written by app_patches/apply.py), so these names become Django
settings. It only defines names of its own plus EMAIL_TIMEOUT and
EMAIL_USE_LOCALTIME (the Date header in the server's local time zone
instead of UTC, false by default as in Django), and never touches
EMAIL_HOST, EMAIL_PORT or the account: those stay the project's.

BULK_EMAIL_BATCH_SPOOL_DIR (batch mode): the directory where dispatching a
campaign in the background drops an empty file named after it, the "poke"
that starts ``manage.py batch_sender`` through a systemd path unit (see
bulk_email.batch_sender). Empty: no poke; the sender's timer still finds
the campaign within its interval.

Values are checked here, at startup, because a typo such as
BULK_EMAIL_BATCH_SIZE=2O would otherwise surface only in the middle of a
send, with half the recipients already mailed.

In rq mode it also defines RQ_QUEUES (django-rq's setting), both queues
from the one BULK_EMAIL_REDIS_URL: the web app and the workers run with
different Redis ACL users simply by having a different URL in their
environment files. In celery mode it defines the CELERY_* settings that
<package>/celery.py reads (``namespace="CELERY"``), the broker URL from
BULK_EMAIL_CELERY_BROKER_URL in the same way (see ``celery_settings`` for
why each reliability setting has its value).
"""
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

QUEUE_MODES = ("batch", "rq", "celery")
REDIS_SCHEMES = ("redis", "rediss", "unix")
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")
# The guide's queues and their job timeouts in seconds. The email queue's 600 s is also
# the rqworker role's stop timeout (systemd waits for a running job that long).
RQ_QUEUE_TIMEOUTS = {"default": 360, "email": 600}
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

__all__ = [
    "EMAIL_TIMEOUT",
    "EMAIL_USE_LOCALTIME",
    "BULK_EMAIL_BATCH_SIZE",
    "BULK_EMAIL_BATCH_DELAY",
    "BULK_EMAIL_QUEUE_MODE",
    "BULK_EMAIL_DAILY_QUOTA",
    "BULK_EMAIL_MAX_ATTEMPTS",
    "BULK_EMAIL_RETRY_BACKOFF",
    "BULK_EMAIL_RETRY_BACKOFF_MAX",
    "BULK_EMAIL_QUOTA_HOOK",
    "BULK_EMAIL_CLAIM_TIMEOUT",
    "BULK_EMAIL_HOLD_FILE",
    "BULK_EMAIL_BATCH_SPOOL_DIR",
    "BULK_EMAIL_RQ_RETRY_INTERVALS",
    "BULK_EMAIL_INSTALLED_APPS",
]


def _number(env: Mapping[str, str], name: str, default: float, kind: type) -> Any:
    """Parse ``env[name]`` as ``kind`` (int or float), naming the variable on failure."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ImproperlyConfigured(f"{name} must be {noun}, got {raw!r}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Parse ``env[name]`` as true/false (the project's spellings), refusing typos such as 'ture'."""
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def _at_least(name: str, value: float, minimum: float) -> None:
    """Reject values below ``minimum`` with a message naming the variable."""
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")


def _intervals(env: Mapping[str, str], name: str, default: list[int]) -> list[int]:
    """Parse a comma-separated list of whole seconds (>= 0), naming the variable on failure."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = [int(item) for item in raw.split(",")]
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be comma-separated whole seconds such as 10,30,60, got {raw!r}"
        ) from None
    if any(value < 0 for value in values):
        raise ImproperlyConfigured(f"{name} must not contain negative seconds, got {raw!r}")
    return values


def service_url(env: Mapping[str, str], name: str, mode: str, schemes: tuple[str, ...], example: str) -> str:
    """Return the URL in ``env[name]``, required in ``mode``, with one of ``schemes``.

    The error messages never repeat the URL: it carries a password.
    """
    url = env.get(name, "").strip()
    if not url:
        raise ImproperlyConfigured(f"{name} must be set when BULK_EMAIL_QUEUE_MODE={mode}, e.g. {example}")
    scheme = urlsplit(url).scheme
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} must start with one of {', '.join(s + '://' for s in schemes)} (got scheme {scheme!r})"
        )
    return url


def redis_url(env: Mapping[str, str]) -> str:
    """BULK_EMAIL_REDIS_URL, the rq queues' Redis with the client's own ACL user."""
    return service_url(
        env, "BULK_EMAIL_REDIS_URL", "rq", REDIS_SCHEMES, "redis://USER:PASSWORD@127.0.0.1:6379/0"
    )


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
    time_limit = _number(env, "BULK_EMAIL_CELERY_TASK_TIME_LIMIT", 600, int)
    backoff_max = _number(env, "BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX", 600, int)
    visibility = _number(env, "BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT", 3600, int)
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
        "CELERY_RESULT_EXPIRES": _number(env, "BULK_EMAIL_CELERY_RESULT_EXPIRES", 7 * 86400, int),
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
        "BULK_EMAIL_CELERY_MAX_RETRIES": _number(env, "BULK_EMAIL_CELERY_MAX_RETRIES", 8, int),
        "BULK_EMAIL_CELERY_RETRY_BACKOFF": _number(env, "BULK_EMAIL_CELERY_RETRY_BACKOFF", 10, int),
        "BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX": backoff_max,
    }
    values.update(broker_tls(values["CELERY_BROKER_URL"]))
    _at_least("BULK_EMAIL_CELERY_TASK_TIME_LIMIT", time_limit, 1)
    _at_least("BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX", backoff_max, 0)
    _at_least("BULK_EMAIL_CELERY_MAX_RETRIES", values["BULK_EMAIL_CELERY_MAX_RETRIES"], 0)
    _at_least("BULK_EMAIL_CELERY_RETRY_BACKOFF", values["BULK_EMAIL_CELERY_RETRY_BACKOFF"], 1)
    _at_least("BULK_EMAIL_CELERY_RESULT_EXPIRES", values["CELERY_RESULT_EXPIRES"], 60)
    # The longest countdown is a retry's (<= backoff max); campaigns check their own spacing.
    _at_least("BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT", visibility, time_limit + backoff_max + 60)
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


def rq_queues(url: str) -> dict[str, dict[str, Any]]:
    """django-rq's RQ_QUEUES: the guide's queues, all on the Redis at ``url``."""
    return {
        name: {"URL": url, "DEFAULT_TIMEOUT": timeout} for name, timeout in RQ_QUEUE_TIMEOUTS.items()
    }


def load(env: Mapping[str, str]) -> dict[str, Any]:
    """Return the bulk_email settings for the environment ``env``.

    A function (rather than module-level code only) so tests can check every
    rule without reloading modules.
    """
    values: dict[str, Any] = {
        # Gmail and most providers drop idle sessions after ~60 s; Django's
        # default (None) would let a dead connection hang a worker forever.
        "EMAIL_TIMEOUT": _number(env, "EMAIL_TIMEOUT", 60, float),
        "BULK_EMAIL_BATCH_SIZE": _number(env, "BULK_EMAIL_BATCH_SIZE", 20, int),
        "BULK_EMAIL_BATCH_DELAY": _number(env, "BULK_EMAIL_BATCH_DELAY", 0.5, float),
        # 500/day is a personal Gmail account, 2000 Google Workspace; 0 disables.
        "BULK_EMAIL_DAILY_QUOTA": _number(env, "BULK_EMAIL_DAILY_QUOTA", 500, int),
        "BULK_EMAIL_MAX_ATTEMPTS": _number(env, "BULK_EMAIL_MAX_ATTEMPTS", 5, int),
        "BULK_EMAIL_RETRY_BACKOFF": _number(env, "BULK_EMAIL_RETRY_BACKOFF", 2, float),
        "BULK_EMAIL_RETRY_BACKOFF_MAX": _number(env, "BULK_EMAIL_RETRY_BACKOFF_MAX", 60, float),
        "BULK_EMAIL_QUEUE_MODE": env.get("BULK_EMAIL_QUEUE_MODE", "").strip().lower() or "batch",
        "BULK_EMAIL_QUOTA_HOOK": env.get("BULK_EMAIL_QUOTA_HOOK", "").strip()
        or "bulk_email.quota.daily_quota",
        # How long a claim on a delivery protects it. A live sender refreshes its claim on
        # every attempt, so this only has to outlast one SMTP attempt (a few EMAIL_TIMEOUTs);
        # after it, a delivery left by a killed worker is sent by the next run.
        "BULK_EMAIL_CLAIM_TIMEOUT": _number(env, "BULK_EMAIL_CLAIM_TIMEOUT", 300, int),
        # A queue mode switch (batch|rq|celery) writes the new mode into this file while the
        # old mode drains; meanwhile campaigns are held, not dispatched (bulk_email.switch).
        # Empty: no switch can be in progress and the file is never looked at.
        "BULK_EMAIL_HOLD_FILE": env.get("BULK_EMAIL_HOLD_FILE", "").strip(),
        # batch mode: where a background dispatch pokes the batch sender (bulk_email.batch_sender).
        "BULK_EMAIL_BATCH_SPOOL_DIR": env.get("BULK_EMAIL_BATCH_SPOOL_DIR", "").strip(),
        # Django's setting: the Date header in local time instead of UTC (Django's default).
        "EMAIL_USE_LOCALTIME": _boolean(env, "EMAIL_USE_LOCALTIME", False),
        # rq mode: when a job leaves deliveries pending (SMTP outage, 4xx, claimed elsewhere)
        # RQ runs it again after these delays; ~21 min in all, then FailedJobRegistry.
        "BULK_EMAIL_RQ_RETRY_INTERVALS": _intervals(
            env, "BULK_EMAIL_RQ_RETRY_INTERVALS", [10, 30, 60, 300, 900]
        ),
    }
    _at_least("EMAIL_TIMEOUT", values["EMAIL_TIMEOUT"], 1)
    _at_least("BULK_EMAIL_BATCH_SIZE", values["BULK_EMAIL_BATCH_SIZE"], 1)
    _at_least("BULK_EMAIL_BATCH_DELAY", values["BULK_EMAIL_BATCH_DELAY"], 0)
    _at_least("BULK_EMAIL_DAILY_QUOTA", values["BULK_EMAIL_DAILY_QUOTA"], 0)
    _at_least("BULK_EMAIL_MAX_ATTEMPTS", values["BULK_EMAIL_MAX_ATTEMPTS"], 1)
    _at_least("BULK_EMAIL_RETRY_BACKOFF", values["BULK_EMAIL_RETRY_BACKOFF"], 0)
    _at_least("BULK_EMAIL_RETRY_BACKOFF_MAX", values["BULK_EMAIL_RETRY_BACKOFF_MAX"], 0)
    _at_least("BULK_EMAIL_CLAIM_TIMEOUT", values["BULK_EMAIL_CLAIM_TIMEOUT"], 1)
    if values["BULK_EMAIL_QUEUE_MODE"] not in QUEUE_MODES:
        raise ImproperlyConfigured(
            f"BULK_EMAIL_QUEUE_MODE must be one of {', '.join(QUEUE_MODES)}, "
            f"got {values['BULK_EMAIL_QUEUE_MODE']!r}"
        )
    values["BULK_EMAIL_INSTALLED_APPS"] = installed_apps(values["BULK_EMAIL_QUEUE_MODE"])
    if values["BULK_EMAIL_QUEUE_MODE"] == "rq":
        values["RQ_QUEUES"] = rq_queues(redis_url(env))
        # rqworker's worker class: RQ's, loading the sending path before it forks (rq_worker.py).
        values["RQ"] = {"WORKER_CLASS": "bulk_email.rq_worker.Worker"}
    if values["BULK_EMAIL_QUEUE_MODE"] == "celery":
        values.update(celery_settings(env))
    return values


def installed_apps(mode: str) -> list[str]:
    """Apps the project must add for ``mode``."""
    if mode == "rq":
        return ["bulk_email", "django_rq"]
    if mode == "celery":
        return ["bulk_email", "django_celery_beat", "django_celery_results"]
    return ["bulk_email"]


_values = load(os.environ)
EMAIL_TIMEOUT = _values["EMAIL_TIMEOUT"]
BULK_EMAIL_BATCH_SIZE = _values["BULK_EMAIL_BATCH_SIZE"]
BULK_EMAIL_BATCH_DELAY = _values["BULK_EMAIL_BATCH_DELAY"]
BULK_EMAIL_QUEUE_MODE = _values["BULK_EMAIL_QUEUE_MODE"]
BULK_EMAIL_DAILY_QUOTA = _values["BULK_EMAIL_DAILY_QUOTA"]
BULK_EMAIL_MAX_ATTEMPTS = _values["BULK_EMAIL_MAX_ATTEMPTS"]
BULK_EMAIL_RETRY_BACKOFF = _values["BULK_EMAIL_RETRY_BACKOFF"]
BULK_EMAIL_RETRY_BACKOFF_MAX = _values["BULK_EMAIL_RETRY_BACKOFF_MAX"]
BULK_EMAIL_QUOTA_HOOK = _values["BULK_EMAIL_QUOTA_HOOK"]
BULK_EMAIL_CLAIM_TIMEOUT = _values["BULK_EMAIL_CLAIM_TIMEOUT"]
BULK_EMAIL_HOLD_FILE = _values["BULK_EMAIL_HOLD_FILE"]
BULK_EMAIL_BATCH_SPOOL_DIR = _values["BULK_EMAIL_BATCH_SPOOL_DIR"]
EMAIL_USE_LOCALTIME = _values["EMAIL_USE_LOCALTIME"]
BULK_EMAIL_RQ_RETRY_INTERVALS = _values["BULK_EMAIL_RQ_RETRY_INTERVALS"]
BULK_EMAIL_INSTALLED_APPS = _values["BULK_EMAIL_INSTALLED_APPS"]
if "RQ_QUEUES" in _values:
    # Only in rq mode: without it, django-rq (not installed in batch mode) is never configured.
    RQ_QUEUES = _values["RQ_QUEUES"]
    RQ = _values["RQ"]
    __all__ = [*__all__, "RQ_QUEUES", "RQ"]
# Only in celery mode: the CELERY_* settings and this app's retry settings for its tasks.
_celery_names = [name for name in _values if name.startswith(("CELERY_", "BULK_EMAIL_CELERY_"))]
globals().update({name: _values[name] for name in _celery_names})
__all__ = [*__all__, *_celery_names]
