"""Creating campaigns: the normalised recipient list goes into the ledger once.

Input that could only fail later is refused here, before any row is
written, with a message saying what to change: a newline in the subject or
sender (header injection; Django would refuse it at send time, after the
campaign was accepted), a subject longer than its column, a message larger
than the provider takes (BULK_EMAIL_MAX_MESSAGE_BYTES, Gmail's 25 MB by
default), and an address whose local part is not ASCII (that needs
SMTPUTF8, which Django's SMTP backend does not speak; an internationalised
domain is fine, it is sent IDNA-encoded). A recipient address that is merely
malformed is still kept, and fails at send time, visible in the ledger.
"""
from collections.abc import Iterable
from email.utils import parseaddr

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.validators import validate_email
from django.db import transaction

from . import modes
from .hold import held_mode
from .models import Campaign, Delivery


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
    sender = from_email or settings.DEFAULT_FROM_EMAIL
    validate(subject, body, html_body or "", sender, addresses)
    mode = held_mode() or settings.BULK_EMAIL_QUEUE_MODE
    # Only in the mode this deployment runs: a campaign held for another mode during a switch
    # is created by the old mode's processes, which lack the new one's library and settings
    # (Celery's, say); its enqueue checks it.
    if mode == settings.BULK_EMAIL_QUEUE_MODE:
        modes.get(mode).check_submit(len(addresses))
    with transaction.atomic():
        campaign = Campaign.objects.create(
            subject=subject,
            body=body,
            html_body=html_body or "",
            from_email=sender,
            # During a queue mode switch, already in the mode it will be sent in (switch.py).
            mode=mode,
        )
        Delivery.objects.bulk_create(
            Delivery(campaign=campaign, recipient=address) for address in addresses
        )
    return campaign


def ascii_local_part(address: str, what: str) -> None:
    """Refuse an address whose local part is not ASCII (needs SMTPUTF8, see module doc)."""
    local = address.rpartition("@")[0]
    if not local.isascii():
        raise ValueError(
            f"{what} {address!r} has a non-ASCII local part, which needs SMTPUTF8; Django's SMTP "
            "backend cannot send it (the domain may be non-ASCII): use an ASCII address"
        )


def validate(subject: str, body: str, html_body: str, sender: str, addresses: list[str]) -> None:
    """Raise ValueError for input the campaign could never be sent with (see module doc)."""
    limit = Campaign._meta.get_field("subject").max_length
    if "\n" in subject or "\r" in subject:
        raise ValueError("the subject must be one line (it contains a line break)")
    if len(subject) > limit:
        raise ValueError(f"the subject is {len(subject)} characters long; at most {limit}")
    if "\n" in sender or "\r" in sender:
        raise ValueError("the sender must be one line (it contains a line break)")
    if len(sender) > Campaign._meta.get_field("from_email").max_length:
        raise ValueError(f"the sender {sender!r} is longer than 254 characters")
    address = parseaddr(sender)[1]
    ascii_local_part(address, "the sender")
    try:
        validate_email(address)
    except ValidationError:
        raise ValueError(f"the sender {sender!r} is not a valid address") from None
    for recipient in addresses:
        ascii_local_part(recipient, "the recipient")
    message = EmailMultiAlternatives(subject, body, sender, [max(addresses, key=len)])
    if html_body:
        message.attach_alternative(html_body, "text/html")
    size = len(message.message().as_bytes())
    if size > settings.BULK_EMAIL_MAX_MESSAGE_BYTES:
        raise ValueError(
            f"the message is about {size} bytes; BULK_EMAIL_MAX_MESSAGE_BYTES allows "
            f"{settings.BULK_EMAIL_MAX_MESSAGE_BYTES} (providers refuse larger ones: Gmail at 25 MB)"
        )
