"""The call a site's own view makes to send one message to many people through the queue.

    from bulk_email.api import send_bulk_email
    campaign = send_bulk_email(subject, body, recipients)

is the drop-in replacement of a loop of ``send_mail`` calls inside the web
request: it writes the campaign into the ledger and hands it to the
configured queue mode, returning at once in every mode (batch included:
the batch sender sends it, see bulk_email.batch_sender). The view then
typically redirects to ``bulk_email:campaign-detail`` to show the progress.

``guidance`` is the one line the product says when a mode is asked to do
more than it is meant for: batch mode above the guide's 50 recipients
(modes.batch.GUIDE_RQ_THRESHOLD), which the guide gives to rq.
"""
from collections.abc import Iterable

from . import modes
from .campaigns import create_campaign
from .dispatch import dispatch
from .models import Campaign


def send_bulk_email(
    subject: str,
    body: str,
    recipients: Iterable[str],
    html_body: str | None = None,
    from_email: str | None = None,
) -> Campaign:
    """Create the campaign and dispatch it without waiting; ValueError for empty input.

    Never sends in the caller's process, so it is safe inside a request of
    any size; during a queue mode switch the campaign is held instead and
    goes out when the switch completes.
    """
    campaign = create_campaign(subject, body, recipients, html_body=html_body, from_email=from_email)
    dispatch(campaign, wait=False)
    return campaign


def guidance(campaign: Campaign) -> str | None:
    """The campaign's mode's advice for its size, else None (advice, not a refusal)."""
    return modes.get(campaign.mode).advice(campaign)
