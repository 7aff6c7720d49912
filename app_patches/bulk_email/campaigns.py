"""Creating campaigns: the normalised recipient list goes into the ledger once."""
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

from .models import Campaign, Delivery
from .switch import held_mode


def unique_recipients(recipients: Iterable[str]) -> list[str]:
    """Strip, drop blanks and drop case-insensitive duplicates, keeping the first spelling.

    Done before insertion because a list pasted from a spreadsheet often has
    the same person twice, and each copy would otherwise be mailed.
    """
    seen: set[str] = set()
    result: list[str] = []
    for raw in recipients:
        address = raw.strip()
        key = address.casefold()
        if address and key not in seen:
            seen.add(key)
            result.append(address)
    return result


def create_campaign(
    subject: str,
    body: str,
    recipients: Iterable[str],
    html_body: str | None = None,
    from_email: str | None = None,
) -> Campaign:
    """Create a campaign and one pending delivery per distinct recipient.

    Invalid addresses are kept (and fail at send time with a clear error) so
    the operator sees them in the ledger instead of having them vanish.
    """
    if not subject.strip():
        raise ValueError("a campaign needs a subject")
    addresses = unique_recipients(recipients)
    if not addresses:
        raise ValueError("a campaign needs at least one recipient")
    with transaction.atomic():
        campaign = Campaign.objects.create(
            subject=subject,
            body=body,
            html_body=html_body or "",
            from_email=from_email or settings.DEFAULT_FROM_EMAIL,
            # During a queue mode switch, already in the mode it will be sent in (switch.py).
            mode=held_mode() or settings.BULK_EMAIL_QUEUE_MODE,
        )
        Delivery.objects.bulk_create(
            Delivery(campaign=campaign, recipient=address) for address in addresses
        )
    return campaign
