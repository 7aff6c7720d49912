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

In rq and celery mode it also defines that mode's own settings (RQ_QUEUES,
the CELERY_* settings): each mode module in bulk_email.modes reads and checks
its own variables, and names the apps the project must install for it.
"""
import os
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from . import modes
from .env import at_least, boolean, intervals, number


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
    "BULK_EMAIL_DATA_REPLY_TIMEOUT",
    "BULK_EMAIL_MAX_MESSAGE_BYTES",
    "BULK_EMAIL_LOGIN_REFUSAL_HOLD",
    "BULK_EMAIL_HOLD_FILE",
    "BULK_EMAIL_BATCH_SPOOL_DIR",
    "BULK_EMAIL_RQ_RETRY_INTERVALS",
    "BULK_EMAIL_INSTALLED_APPS",
]


def load(env: Mapping[str, str]) -> dict[str, Any]:
    """Return the bulk_email settings for the environment ``env``.

    A function (rather than module-level code only) so tests can check every
    rule without reloading modules.
    """
    values: dict[str, Any] = {
        # Gmail and most providers drop idle sessions after ~60 s; Django's
        # default (None) would let a dead connection hang a worker forever.
        "EMAIL_TIMEOUT": number(env, "EMAIL_TIMEOUT", 60, float),
        "BULK_EMAIL_BATCH_SIZE": number(env, "BULK_EMAIL_BATCH_SIZE", 20, int),
        "BULK_EMAIL_BATCH_DELAY": number(env, "BULK_EMAIL_BATCH_DELAY", 0.5, float),
        # 500/day is a personal Gmail account, 2000 Google Workspace; 0 disables.
        "BULK_EMAIL_DAILY_QUOTA": number(env, "BULK_EMAIL_DAILY_QUOTA", 500, int),
        "BULK_EMAIL_MAX_ATTEMPTS": number(env, "BULK_EMAIL_MAX_ATTEMPTS", 5, int),
        "BULK_EMAIL_RETRY_BACKOFF": number(env, "BULK_EMAIL_RETRY_BACKOFF", 2, float),
        "BULK_EMAIL_RETRY_BACKOFF_MAX": number(env, "BULK_EMAIL_RETRY_BACKOFF_MAX", 60, float),
        "BULK_EMAIL_QUEUE_MODE": env.get("BULK_EMAIL_QUEUE_MODE", "").strip().lower() or "batch",
        "BULK_EMAIL_QUOTA_HOOK": env.get("BULK_EMAIL_QUOTA_HOOK", "").strip()
        or "bulk_email.quota.daily_quota",
        # How long a claim on a delivery protects it. A live sender refreshes its claim before
        # every attempt and every backoff sleep, so this has to outlast the longest attempt
        # (checked below: see longest_attempt); after it, a delivery left by a worker killed on
        # another machine is sent by the next run (one killed on the same machine: at once).
        "BULK_EMAIL_CLAIM_TIMEOUT": number(env, "BULK_EMAIL_CLAIM_TIMEOUT", 1800, int),
        # Seconds to wait for the reply to the final dot of DATA (RFC 5321 4.5.3.2.6: 10 min).
        "BULK_EMAIL_DATA_REPLY_TIMEOUT": number(env, "BULK_EMAIL_DATA_REPLY_TIMEOUT", 600, float),
        # Largest message create_campaign accepts (Gmail's limit: 25 MB).
        "BULK_EMAIL_MAX_MESSAGE_BYTES": number(env, "BULK_EMAIL_MAX_MESSAGE_BYTES", 25 * 1024 * 1024, int),
        # After a refused SMTP login, no sender logs in again with the same settings for this
        # long (bulk_email.login_refusals): providers lock accounts after a few bad logins.
        "BULK_EMAIL_LOGIN_REFUSAL_HOLD": number(env, "BULK_EMAIL_LOGIN_REFUSAL_HOLD", 3600, int),
        # A queue mode switch (batch|rq|celery) writes the new mode into this file while the
        # old mode drains; meanwhile campaigns are held, not dispatched (bulk_email.switch).
        # Empty: no switch can be in progress and the file is never looked at.
        "BULK_EMAIL_HOLD_FILE": env.get("BULK_EMAIL_HOLD_FILE", "").strip(),
        # batch mode: where a background dispatch pokes the batch sender (bulk_email.batch_sender).
        "BULK_EMAIL_BATCH_SPOOL_DIR": env.get("BULK_EMAIL_BATCH_SPOOL_DIR", "").strip(),
        # Django's setting: the Date header in local time instead of UTC (Django's default).
        "EMAIL_USE_LOCALTIME": boolean(env, "EMAIL_USE_LOCALTIME", False),
        # rq mode: when a job leaves deliveries pending (SMTP outage, 4xx, claimed elsewhere)
        # RQ runs it again after these delays; ~21 min in all, then FailedJobRegistry.
        "BULK_EMAIL_RQ_RETRY_INTERVALS": intervals(
            env, "BULK_EMAIL_RQ_RETRY_INTERVALS", [10, 30, 60, 300, 900]
        ),
    }
    at_least("EMAIL_TIMEOUT", values["EMAIL_TIMEOUT"], 1)
    at_least("BULK_EMAIL_BATCH_SIZE", values["BULK_EMAIL_BATCH_SIZE"], 1)
    at_least("BULK_EMAIL_BATCH_DELAY", values["BULK_EMAIL_BATCH_DELAY"], 0)
    at_least("BULK_EMAIL_DAILY_QUOTA", values["BULK_EMAIL_DAILY_QUOTA"], 0)
    at_least("BULK_EMAIL_MAX_ATTEMPTS", values["BULK_EMAIL_MAX_ATTEMPTS"], 1)
    at_least("BULK_EMAIL_RETRY_BACKOFF", values["BULK_EMAIL_RETRY_BACKOFF"], 0)
    at_least("BULK_EMAIL_RETRY_BACKOFF_MAX", values["BULK_EMAIL_RETRY_BACKOFF_MAX"], 0)
    at_least("BULK_EMAIL_CLAIM_TIMEOUT", values["BULK_EMAIL_CLAIM_TIMEOUT"], 1)
    at_least("BULK_EMAIL_DATA_REPLY_TIMEOUT", values["BULK_EMAIL_DATA_REPLY_TIMEOUT"], values["EMAIL_TIMEOUT"])
    at_least("BULK_EMAIL_MAX_MESSAGE_BYTES", values["BULK_EMAIL_MAX_MESSAGE_BYTES"], 1024)
    at_least("BULK_EMAIL_LOGIN_REFUSAL_HOLD", values["BULK_EMAIL_LOGIN_REFUSAL_HOLD"], 0)
    check_claim_timeout(values)
    if values["BULK_EMAIL_QUEUE_MODE"] not in modes.NAMES:
        raise ImproperlyConfigured(
            f"BULK_EMAIL_QUEUE_MODE must be one of {', '.join(modes.NAMES)}, "
            f"got {values['BULK_EMAIL_QUEUE_MODE']!r}"
        )
    mode = modes.get(values["BULK_EMAIL_QUEUE_MODE"])
    values["BULK_EMAIL_INSTALLED_APPS"] = installed_apps(mode.name)
    values.update(mode.settings(env))
    return values


# Socket operations of one attempt that each get EMAIL_TIMEOUT, at most: connect, greeting,
# EHLO, STARTTLS, EHLO again, AUTH (up to 3 round trips), MAIL, RCPT, DATA, writing the message,
# and the QUIT of a failed attempt. The reply to the final dot gets BULK_EMAIL_DATA_REPLY_TIMEOUT.
ATTEMPT_TIMEOUTS = 12
CLAIM_REFRESH_INTERVAL = 5


def longest_attempt(values: Mapping[str, Any]) -> float:
    """Seconds a live sender may spend between two claim refreshes (an attempt, or a backoff).

    The sender refreshes its claim before each attempt and before each
    backoff sleep; nothing can refresh it while it blocks in one.
    """
    attempt = ATTEMPT_TIMEOUTS * values["EMAIL_TIMEOUT"] + values["BULK_EMAIL_DATA_REPLY_TIMEOUT"]
    # + the age a claim may have when a refresh is skipped (sending.REFRESH_INTERVAL, 5 s).
    return attempt + values["BULK_EMAIL_RETRY_BACKOFF_MAX"] + CLAIM_REFRESH_INTERVAL


def check_claim_timeout(values: Mapping[str, Any]) -> None:
    """Refuse a claim timeout that a live sender could outlast: another runner would take the
    delivery over and send it while the first one may still get its 250."""
    longest = longest_attempt(values)
    if values["BULK_EMAIL_CLAIM_TIMEOUT"] <= longest:
        raise ImproperlyConfigured(
            f"BULK_EMAIL_CLAIM_TIMEOUT ({values['BULK_EMAIL_CLAIM_TIMEOUT']} s) must exceed the longest "
            f"SMTP attempt, {longest:.0f} s = {ATTEMPT_TIMEOUTS} x EMAIL_TIMEOUT ({values['EMAIL_TIMEOUT']} s) "
            f"+ BULK_EMAIL_DATA_REPLY_TIMEOUT ({values['BULK_EMAIL_DATA_REPLY_TIMEOUT']} s) "
            f"+ BULK_EMAIL_RETRY_BACKOFF_MAX ({values['BULK_EMAIL_RETRY_BACKOFF_MAX']} s) "
            f"+ {CLAIM_REFRESH_INTERVAL} s between claim refreshes; raise "
            "BULK_EMAIL_CLAIM_TIMEOUT or lower EMAIL_TIMEOUT / BULK_EMAIL_DATA_REPLY_TIMEOUT"
        )


def installed_apps(mode: str) -> list[str]:
    """Apps the project must add for ``mode`` (the same table apply.py reads)."""
    return list(modes.get(mode).needs.installed_apps)


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
BULK_EMAIL_DATA_REPLY_TIMEOUT = _values["BULK_EMAIL_DATA_REPLY_TIMEOUT"]
BULK_EMAIL_MAX_MESSAGE_BYTES = _values["BULK_EMAIL_MAX_MESSAGE_BYTES"]
BULK_EMAIL_LOGIN_REFUSAL_HOLD = _values["BULK_EMAIL_LOGIN_REFUSAL_HOLD"]
BULK_EMAIL_HOLD_FILE = _values["BULK_EMAIL_HOLD_FILE"]
BULK_EMAIL_BATCH_SPOOL_DIR = _values["BULK_EMAIL_BATCH_SPOOL_DIR"]
EMAIL_USE_LOCALTIME = _values["EMAIL_USE_LOCALTIME"]
BULK_EMAIL_RQ_RETRY_INTERVALS = _values["BULK_EMAIL_RQ_RETRY_INTERVALS"]
BULK_EMAIL_INSTALLED_APPS = _values["BULK_EMAIL_INSTALLED_APPS"]
# The mode's own settings (rq: RQ_QUEUES and RQ; celery: the CELERY_* and this app's retry
# settings for its tasks), only in that mode: django-rq, say, is never configured in batch mode.
_mode_names = [name for name in _values if name not in __all__]
globals().update({name: _values[name] for name in _mode_names})
__all__ = [*__all__, *_mode_names]
