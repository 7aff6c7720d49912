"""What a queue mode is: the one interface dispatch, retry, settings and the status commands use.

Every mode module is imported by bulk_email.settings while Django is still
reading the project's settings (it asks the mode for its own settings), so
a mode module imports only the standard library and the env/table helpers at
its top. What needs the models, the sending path or the mode's queue library
is imported inside the method that uses it: that is also what keeps rq out
of a batch deployment and Celery out of an rq one.

Nothing here imports bulk_email.dispatch or bulk_email.retry (they import
the modes): what a mode needs of them, retry hands it in a RetryRun.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..models import Campaign
    from ..sending import CampaignRun, Sleep
    from .table import ProjectNeeds


@dataclass(frozen=True)
class RetryRun:
    """One ``retry_failed`` as a mode sees it: the operator's flags, what was revived, the generic steps.

    ``dispatch`` and ``retry_campaign`` are bulk_email.dispatch.dispatch and
    bulk_email.retry.retry_campaign bound to ``wait``, passed in so that no
    mode module imports the modules that import it.
    """

    dry_run: bool
    wait: bool
    include_failed: bool
    revived: int  # failed deliveries made pending (or, with dry_run, that would be)
    revived_campaigns: list[Campaign]
    dispatch: Callable[[Campaign], CampaignRun]
    retry_campaign: Callable[[Campaign], dict]


class QueueMode(Protocol):
    """The per-mode part of bulk_email; one object per mode, found with ``bulk_email.modes.get``."""

    name: str
    needs: ProjectNeeds
    # Beat's schedule in the database (django-celery-beat): setup_periodic_tasks registers in it.
    has_periodic_tasks: bool
    # RQ's registries, which need rq_maintenance's recovery after a killed worker or lost jobs.
    needs_rq_maintenance: bool

    def settings(self, env: Mapping[str, str]) -> dict[str, Any]:
        """The mode's own Django settings from the environment, checked (ImproperlyConfigured)."""

    def check_submit(self, recipients: int) -> None:
        """Refuse (ValueError) a campaign of this many recipients before any row is written."""

    def dispatch(self, campaign: Campaign, *, wait: bool, sleep: Sleep) -> CampaignRun:
        """Hand the campaign's pending deliveries over and set its dispatched_at when the mode's
        guarantee needs it (see bulk_email.dispatch)."""

    def advice(self, campaign: Campaign) -> str | None:
        """The one line said about a campaign larger than the mode is meant for (None: no advice)."""

    def leftover_line(self, campaign: Campaign, pending: int, stopped: str | None) -> str | None:
        """What send_campaign says of the deliveries a waited-for dispatch left pending and who
        sends them; None when dispatch only hands them to a queue (pending is its normal state)."""

    def campaign_extras(self, campaign: Campaign) -> dict[str, int]:
        """campaign_status's counts from the mode's queue (empty when it has none)."""

    def queue_report(self, timeout: float) -> dict[str, Any] | None:
        """queue_status's part of this mode (None: the mode has no queue); may raise a broker error."""

    def report_lines(self, part: dict[str, Any]) -> list[str]:
        """The text lines of queue_report's part."""

    def drop_failed_entries(self, campaign: Campaign) -> int:
        """Remove the campaign's failed jobs or results: a fresh dispatch replaces them."""

    def retry_failed(self, run: RetryRun) -> dict:
        """retry_failed's per-mode part and its summary (see bulk_email.retry)."""

    def retry_outcome(self, summary: dict) -> tuple[int, str]:
        """How many things retry_failed retried, and what they are, for the command's line."""


def retry_queue(run: RetryRun, requeue: Callable[[bool], dict]) -> dict:
    """rq and celery: dispatch the revived campaigns afresh, then ``requeue(dry_run)`` what the
    queue gave up on; the summary says how many campaigns were revived."""
    for campaign in [] if run.dry_run else run.revived_campaigns:
        run.retry_campaign(campaign)
    summary = requeue(run.dry_run)
    if not run.include_failed:
        return summary
    return {**summary, "revived": run.revived, "campaigns_revived": len(run.revived_campaigns)}
