"""Settings of the bulk_email app, read from the environment.

The project's settings.py star-imports this module at its very end (the
block written by app_patches/apply.py), so these names become Django
settings. It only defines names of its own plus EMAIL_TIMEOUT, and never
touches EMAIL_HOST, EMAIL_PORT or the account: those stay the project's.

Values are checked here, at startup, because a typo such as
BULK_EMAIL_BATCH_SIZE=2O would otherwise surface only in the middle of a
send, with half the recipients already mailed.

In rq mode it also defines RQ_QUEUES (django-rq's setting), both queues
from the one BULK_EMAIL_REDIS_URL: the web app and the workers run with
different Redis ACL users simply by having a different URL in their
environment files.
"""
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

QUEUE_MODES = ("batch", "rq", "celery")
REDIS_SCHEMES = ("redis", "rediss", "unix")
# The guide's queues and their job timeouts in seconds. The email queue's 600 s is also
# the rqworker role's stop timeout (systemd waits for a running job that long).
RQ_QUEUE_TIMEOUTS = {"default": 360, "email": 600}

__all__ = [
    "EMAIL_TIMEOUT",
    "BULK_EMAIL_BATCH_SIZE",
    "BULK_EMAIL_BATCH_DELAY",
    "BULK_EMAIL_QUEUE_MODE",
    "BULK_EMAIL_DAILY_QUOTA",
    "BULK_EMAIL_MAX_ATTEMPTS",
    "BULK_EMAIL_RETRY_BACKOFF",
    "BULK_EMAIL_RETRY_BACKOFF_MAX",
    "BULK_EMAIL_QUOTA_HOOK",
    "BULK_EMAIL_CLAIM_TIMEOUT",
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


def redis_url(env: Mapping[str, str]) -> str:
    """Return BULK_EMAIL_REDIS_URL, required in rq mode.

    The error messages never repeat the URL: it carries the ACL password.
    """
    url = env.get("BULK_EMAIL_REDIS_URL", "").strip()
    if not url:
        raise ImproperlyConfigured(
            "BULK_EMAIL_REDIS_URL must be set when BULK_EMAIL_QUEUE_MODE=rq, "
            "e.g. redis://USER:PASSWORD@127.0.0.1:6379/0"
        )
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ImproperlyConfigured(
            f"BULK_EMAIL_REDIS_URL must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)} "
            f"(got scheme {scheme!r})"
        )
    return url


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
    return values


def installed_apps(mode: str) -> list[str]:
    """Apps the project must add for ``mode`` (celery adds its own here later)."""
    if mode == "rq":
        return ["bulk_email", "django_rq"]
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
BULK_EMAIL_RQ_RETRY_INTERVALS = _values["BULK_EMAIL_RQ_RETRY_INTERVALS"]
BULK_EMAIL_INSTALLED_APPS = _values["BULK_EMAIL_INSTALLED_APPS"]
if "RQ_QUEUES" in _values:
    # Only in rq mode: without it, django-rq (not installed in batch mode) is never configured.
    RQ_QUEUES = _values["RQ_QUEUES"]
    __all__ = [*__all__, "RQ_QUEUES"]
