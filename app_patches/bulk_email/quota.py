"""The sending quota, reserved together with each batch's claims.

Providers count messages per account per day (Gmail: 500 for a personal
account, 2000 for Workspace). Going over gets the account blocked for a
day, so the sender stops just below the limit and leaves the rest pending.

The count comes from the ledger, not from a counter in memory, so every
process (gunicorn, rq or celery workers) shares one quota, and it is taken
when a batch is claimed (bulk_email.claims.claim_batch): under one lock
(PostgreSQL's advisory lock; SQLite's single writer), messages sent in the
last 24 h plus deliveries under a live claim of any runner, and the batch
claims no more than what is left. So the limit holds across all workers,
however many send at the same instant: a delivery counts from the moment
it is claimed, and a claim given back (deferred, failed, released) stops
counting.

A project can replace the check with BULK_EMAIL_QUOTA_HOOK, a dotted path
to a callable ``hook(delivery) -> str | None`` returning None to allow the
message or a reason to stop sending; it is asked before every message (the
bound across concurrent senders is then the hook's business).
"""
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from .models import Delivery

QuotaHook = Callable[[Delivery], str | None]
DEFAULT_HOOK = "bulk_email.quota.daily_quota"


def sent_in_last_day() -> int:
    """Count messages accepted by the server during the last 24 hours, all campaigns."""
    since = timezone.now() - timedelta(days=1)
    return Delivery.objects.filter(status=Delivery.Status.SENT, sent_at__gte=since).count()


def refusal(limit: int) -> str:
    """Why the run stopped at the daily quota."""
    return (
        f"daily quota of {limit} reached (sent or being sent in the last 24 h); "
        "remaining deliveries stay pending, send them later with "
        "'manage.py send_campaign --resume <campaign id>'"
    )


def daily_quota(delivery: Delivery) -> str | None:
    """Refuse the next message once BULK_EMAIL_DAILY_QUOTA were sent in 24 h (0 = no limit).

    The default hook. The sender does not call it per message: it reserves
    the quota with the claims (see module doc), which is exact under
    concurrency. Kept callable for projects that wrap it in a hook of theirs.
    """
    limit = settings.BULK_EMAIL_DAILY_QUOTA
    if not limit or sent_in_last_day() < limit:
        return None
    return refusal(limit)


def reservation_limit() -> int:
    """The limit the claims reserve against: the daily quota with the default hook, else 0 (none)."""
    return settings.BULK_EMAIL_DAILY_QUOTA if settings.BULK_EMAIL_QUOTA_HOOK == DEFAULT_HOOK else 0


def get_quota_hook() -> QuotaHook | None:
    """The configured per-message hook, or None for the default (reserved with the claims)."""
    if settings.BULK_EMAIL_QUOTA_HOOK == DEFAULT_HOOK:
        return None
    return import_string(settings.BULK_EMAIL_QUOTA_HOOK)
