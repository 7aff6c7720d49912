"""Bulk email as the site sent it before the queue work.

This is deliberately the naive version the project replaces: one
``send_mail`` call (one SMTP connection, login and TLS handshake) per
recipient, all inside the web request. With a few hundred recipients the
request outlives gunicorn's timeout, the provider throttles the burst of
connections, and a failure half-way leaves no record of who already got
the message.
"""
from collections.abc import Iterable

from django.core.mail import send_mail


def send_bulk_email(
    subject: str, body: str, recipients: Iterable[str], from_email: str | None = None
) -> int:
    """Send ``body`` to every recipient in turn and return how many were sent."""
    sent = 0
    for recipient in recipients:
        sent += send_mail(subject, body, from_email, [recipient], fail_silently=False)
    return sent
