"""Settings of the bulk_email app, read from the environment.

The project's settings.py star-imports this module at its very end (the
block written by app_patches/apply.py), so these names become Django
settings. It only defines names of its own plus EMAIL_TIMEOUT, and never
touches EMAIL_HOST, EMAIL_PORT or the account: those stay the project's.

Values are checked here, at startup, because a typo such as
BULK_EMAIL_BATCH_SIZE=2O would otherwise surface only in the middle of a
send, with half the recipients already mailed.
"""
import os
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

QUEUE_MODES = ("batch", "rq", "celery")

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
    }
    _at_least("EMAIL_TIMEOUT", values["EMAIL_TIMEOUT"], 1)
    _at_least("BULK_EMAIL_BATCH_SIZE", values["BULK_EMAIL_BATCH_SIZE"], 1)
    _at_least("BULK_EMAIL_BATCH_DELAY", values["BULK_EMAIL_BATCH_DELAY"], 0)
    _at_least("BULK_EMAIL_DAILY_QUOTA", values["BULK_EMAIL_DAILY_QUOTA"], 0)
    _at_least("BULK_EMAIL_MAX_ATTEMPTS", values["BULK_EMAIL_MAX_ATTEMPTS"], 1)
    _at_least("BULK_EMAIL_RETRY_BACKOFF", values["BULK_EMAIL_RETRY_BACKOFF"], 0)
    _at_least("BULK_EMAIL_RETRY_BACKOFF_MAX", values["BULK_EMAIL_RETRY_BACKOFF_MAX"], 0)
    if values["BULK_EMAIL_QUEUE_MODE"] not in QUEUE_MODES:
        raise ImproperlyConfigured(
            f"BULK_EMAIL_QUEUE_MODE must be one of {', '.join(QUEUE_MODES)}, "
            f"got {values['BULK_EMAIL_QUEUE_MODE']!r}"
        )
    values["BULK_EMAIL_INSTALLED_APPS"] = installed_apps(values["BULK_EMAIL_QUEUE_MODE"])
    return values


def installed_apps(mode: str) -> list[str]:
    """Apps the project must add for ``mode`` (rq/celery add theirs here later)."""
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
BULK_EMAIL_INSTALLED_APPS = _values["BULK_EMAIL_INSTALLED_APPS"]
