"""The sending quota, checked before every message.

Providers count messages per account per day (Gmail: 500 for a personal
account, 2000 for Workspace). Going over gets the account blocked for a
day, so the sender stops just below the limit and leaves the rest pending.

The count comes from the ledger (deliveries marked sent in the last 24 h),
not from a counter in memory, so every process (gunicorn, rq or celery
workers) shares one quota. Two processes checking at the same instant can
each send one more message, so the overshoot is at most the number of
concurrent senders; keep the quota a little below the provider's limit if
you run many.

A project can replace the check with BULK_EMAIL_QUOTA_HOOK, a dotted path
to a callable ``hook(delivery) -> str | None`` returning None to allow the
message or a reason to stop sending.
"""
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from .models import Delivery

QuotaHook = Callable[[Delivery], str | None]


def sent_in_last_day() -> int:
    """Count messages accepted by the server during the last 24 hours, all campaigns."""
    since = timezone.now() - timedelta(days=1)
    return Delivery.objects.filter(status=Delivery.Status.SENT, sent_at__gte=since).count()


def daily_quota(delivery: Delivery) -> str | None:
    """Refuse the next message once BULK_EMAIL_DAILY_QUOTA were sent in 24 h (0 = no limit)."""
    limit = settings.BULK_EMAIL_DAILY_QUOTA
    if not limit:
        return None
    used = sent_in_last_day()
    if used < limit:
        return None
    return (
        f"daily quota of {limit} reached ({used} sent in the last 24 h); "
        "remaining deliveries stay pending, send them later with "
        "'manage.py send_campaign --resume <campaign id>'"
    )


def get_quota_hook() -> QuotaHook:
    """Return the configured hook (looked up each time so settings overrides apply)."""
    return import_string(settings.BULK_EMAIL_QUOTA_HOOK)
