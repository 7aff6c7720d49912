"""A refused SMTP login stops every later batch with the same configuration.

A wrong EMAIL_HOST_PASSWORD is refused with 535 on every try, and
providers lock the account after a few (Gmail, Microsoft 365). rq retries a
failed job and Celery runs a campaign's other batches, each of which would
log in again: so the first refusal is recorded in the ledger's database
(models.LoginRefusal), keyed by a fingerprint of the email settings (the
password only as a hash), and senders with that fingerprint stop before
connecting, leaving everything pending. Fixing the configuration changes the
fingerprint; otherwise the refusal lapses after
BULK_EMAIL_LOGIN_REFUSAL_HOLD seconds (default one hour).
"""
import hashlib
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import LoginRefusal


def fingerprint() -> str:
    """A hash of the settings a login depends on (backend, server, user, password)."""
    parts = [
        str(getattr(settings, name, ""))
        for name in ("EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD")
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def refused() -> str | None:
    """Why sending must not log in now (a recorded refusal of this configuration), or None."""
    hold = settings.BULK_EMAIL_LOGIN_REFUSAL_HOLD
    since = timezone.now() - timedelta(seconds=hold)
    refusal = LoginRefusal.objects.filter(fingerprint=fingerprint(), refused_at__gte=since).first()
    if refusal is None:
        return None
    return (
        f"SMTP login was refused at {refusal.refused_at:%Y-%m-%d %H:%M:%S} UTC with this configuration "
        f"({refusal.error}); not logging in again until EMAIL_HOST_USER/EMAIL_HOST_PASSWORD change "
        f"or {hold} s have passed; remaining deliveries stay pending"
    )


def record(error: str) -> None:
    """Remember that the server refused this configuration's login."""
    LoginRefusal.objects.update_or_create(
        fingerprint=fingerprint(), defaults={"error": error, "refused_at": timezone.now()}
    )
