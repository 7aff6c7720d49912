"""The call a site's own view makes to send one message to many people through the queue.

    from bulk_email.api import send_bulk_email
    campaign = send_bulk_email(subject, body, recipients)

is the drop-in replacement of a loop of ``send_mail`` calls inside the web
request: it writes the campaign into the ledger and hands it to the
configured queue mode, returning at once in every mode (batch included:
the batch sender sends it, see bulk_email.batch_sender). The view then
typically redirects to ``bulk_email:campaign-detail`` to show the progress.

``guidance`` is the one line the product says when batch mode is asked to
do what the guide gives to rq: more than 50 recipients.
"""
from collections.abc import Iterable

from .campaigns import create_campaign
from .dispatch import dispatch
from .models import Campaign

# The guide: "more than 50 recipients at once: use the rq mode".
GUIDE_RQ_THRESHOLD = 50


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
    """The advice for a batch campaign above the guide's threshold, else None (advice, not a refusal)."""
    if campaign.mode != "batch":
        return None
    total = campaign.deliveries.count()
    if total <= GUIDE_RQ_THRESHOLD:
        return None
    return (
        f"Batch mode: {total} recipients; for more than {GUIDE_RQ_THRESHOLD} the rq or celery mode "
        "sends faster and retries in the background (site.yml -e queue_mode=rq)"
    )
