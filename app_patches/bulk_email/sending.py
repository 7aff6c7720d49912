"""Sending a campaign in batches over one reused SMTP connection per batch.

The unit of work is :func:`send_deliveries`: "send these delivery ids over
one connection". Batch mode calls it once per batch, in process; the rq and
celery modes enqueue the same call, one job per batch. The pieces it uses
live beside it: SMTP error classes (smtp_errors), claims and the ledger's
marks (claims), the connection (connection), the quota (quota). Their
names are re-exported here for the modules and commands that import them
from ``bulk_email.sending``.

Rules, and why:

* Each message is sent on its own (``send_messages([one])``) and its
  delivery is marked sent right after the server accepted it. Django's
  ``send_messages(list)`` only returns a count, so after a failure nobody
  could tell which ones got through; sending them again would mail people
  twice.
* A batch is claimed in one statement (and with it the quota reserved)
  before anything is sent; every mark is a compare-and-set on this
  runner's claim. Before each attempt and each backoff sleep the claims of
  the whole batch are renewed together once the last renewal is
  refresh_interval() old (see Claimed), so a batch that takes longer than
  the claim timeout keeps all of them. A delivery another runner holds, or
  took over from this one, counts as ``busy`` and stays as that runner
  leaves it.
* Transient errors (SMTP 4xx such as 421/451, a dropped connection, a
  timeout or another socket error) close the connection, wait with
  exponential backoff (BULK_EMAIL_RETRY_BACKOFF * 2**n, capped by
  BULK_EMAIL_RETRY_BACKOFF_MAX), reconnect and retry the same recipient,
  up to BULK_EMAIL_MAX_ATTEMPTS attempts in one run. A recipient that is
  still failing then stays *pending* with its last error: it is never lost
  and a later run (``send_campaign --resume``) sends it. After
  OUTAGE_AFTER such recipients in a row the run stops, because the server
  is down rather than picky, and retrying every remaining recipient would
  only burn time.
* A recipient refused at RCPT (5xx) or an invalid address marks the
  delivery failed; sending goes on with the next recipient.
* A 5xx at MAIL FROM or DATA refuses the account or the message (daily
  sending limit, relay denied, message too big): the run stops with the
  reason and every unsent delivery stays pending (smtp_errors.STOP).
* A rejected login (SMTP 5xx on AUTH) or a server without STARTTLS is a
  configuration problem affecting every message: the run raises
  SmtpConfigurationError (a one-line message) and all unsent deliveries
  stay pending.

The window that remains: the server has answered 250 to the final dot, but
the process dies (SIGKILL, OOM, power loss) or loses the database before
the UPDATE that marks the delivery sent has committed. The ledger still
says pending, the claim expires after BULK_EMAIL_CLAIM_TIMEOUT (or at once
if the holder's pid is gone on the same machine), and the message is sent
a second time. The mark is therefore its own autocommitted UPDATE issued
right after the reply (no surrounding transaction, nothing else in
between), which shrinks the window to one database write; and the
Message-ID is stable per delivery, so receiving systems can drop the copy.
What no longer sends twice: a slow reply to the final dot (waited for up
to BULK_EMAIL_DATA_REPLY_TIMEOUT, RFC 5321's 10 minutes, see connection),
and a runner that outlived its claim (its marks are compare-and-sets, see
claims). A reply lost in the network (the server sent 250, we saw a
timeout after waiting the full data reply timeout) is indistinguishable
from no reply and is retried: that, too, is a copy with the same
Message-ID.
"""
import logging
import secrets
import smtplib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.utils import DNS_NAME
from django.core.validators import validate_email

from . import login_refusals, quota
from .claims import (  # noqa: F401  (re-exported: bulk_email.sending names others import)
    claim,
    claim_batch,
    claim_name,
    default_runner,
    execution_token,
    holder_is_dead,
    machine_identity,
    mark,
    refresh,
    release_claims,
)
from .connection import (  # noqa: F401
    close_quietly,
    preload,
    prepare_connection,
    share_tls_context,
    tls_context,
)
from .models import Campaign, Delivery
from .smtp_errors import (  # noqa: F401
    FATAL,
    PERMANENT,
    STOP,
    TRANSIENT,
    SmtpConfigurationError,
    classify,
    configuration_error,
    describe,
)

logger = logging.getLogger("bulk_email")

CAMPAIGN_HEADER = "X-EduPulse-Campaign"
OUTAGE_AFTER = 3

Sleep = Callable[[float], None]

SENT, FAILED, DEFERRED, BUSY = "sent", "failed", "deferred", "busy"


@dataclass
class SendResult:
    """What one call of send_deliveries did; ``stopped`` says why it ended early, if it did."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    busy: int = 0  # held by another live runner, or taken over from this one
    stopped: str | None = None

    def add(self, outcome: str) -> None:
        """Count one delivery's outcome (SENT, FAILED, DEFERRED or BUSY)."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def pending(self) -> int:
        """Deliveries this run was given that it left pending (deferred or busy)."""
        return self.deferred + self.busy


@dataclass
class CampaignRun:
    """Summary of one send_campaign call, with the campaign's ledger counts at the end."""

    campaign_id: str
    batches: int = 0
    results: list[SendResult] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # Why nothing was sent or enqueued at all, if so: a queue mode switch holds the campaign.
    held: str | None = None

    @property
    def stopped(self) -> str | None:
        """The reason the last batch stopped early, if any."""
        return self.results[-1].stopped if self.results else None


class Stop(Exception):
    """Raised by deliver() when the whole run must stop (smtp_errors.STOP); carries the reason."""


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    delay = settings.BULK_EMAIL_RETRY_BACKOFF * 2 ** (attempt - 1)
    return min(delay, settings.BULK_EMAIL_RETRY_BACKOFF_MAX)


def message_id(delivery: Delivery) -> str:
    """A Message-ID unique per delivery and stable across retries.

    Stable so that if a server accepted a message but the connection died
    before we saw the reply, the copy sent on retry carries the same id and
    mail systems can recognise the duplicate.
    """
    return f"<edupulse.{delivery.campaign_id}.{delivery.pk}@{DNS_NAME}>"


def build_message(delivery: Delivery, connection: BaseEmailBackend) -> EmailMultiAlternatives:
    """Build the message of one delivery, tagged with its campaign id."""
    campaign = delivery.campaign
    message = EmailMultiAlternatives(
        subject=campaign.subject,
        body=campaign.body,
        from_email=campaign.from_email,
        to=[delivery.recipient],
        connection=connection,
        headers={CAMPAIGN_HEADER: str(campaign.id), "Message-ID": message_id(delivery)},
    )
    if campaign.html_body:
        message.attach_alternative(campaign.html_body, "text/html")
    return message


# A claim refreshed less than this many seconds ago (and no sleep since) cannot have expired,
# so the refresh before the next attempt is skipped: most messages of a batch then cost one
# statement (the mark). settings.longest_attempt adds it to what the claim timeout must exceed.
REFRESH_INTERVAL = 5.0  # = settings.CLAIM_REFRESH_INTERVAL
# ... and never more than this share of BULK_EMAIL_CLAIM_TIMEOUT (see refresh_interval).
REFRESH_SHARE = 0.25


def refresh_interval() -> float:
    """Seconds a batch's claims may go unrefreshed before the next attempt renews all of them.

    REFRESH_INTERVAL, or a quarter of the claim timeout if that is shorter.
    The startup check (settings.check_claim_timeout) only accepts timeouts
    far above REFRESH_INTERVAL, but a project or a test may set a shorter
    one afterwards; a fixed interval longer than the timeout would then let
    every claim of a batch expire while its sender is still working through
    it, and another runner would take them over and send them again.
    """
    return min(REFRESH_INTERVAL, settings.BULK_EMAIL_CLAIM_TIMEOUT * REFRESH_SHARE)


@dataclass
class Claimed:
    """The deliveries of one batch this runner holds; refreshed together, shrinking as they end."""

    runner: str
    ids: set[int]
    refreshed_at: float = float("-inf")  # time.monotonic() just before the last refresh began

    def keep(self, delivery: Delivery) -> bool:
        """Refresh every claim of the batch still held (CAS); True if ``delivery`` is still this
        runner's. All of them, not only ``delivery``'s: the batch was claimed at once, and a
        batch may take longer than the claim timeout although each attempt takes less."""
        started = time.monotonic()
        if started - self.refreshed_at >= refresh_interval():
            self.ids = refresh(sorted(self.ids), self.runner) if self.ids else set()
            self.refreshed_at = started
        return delivery.pk in self.ids

    def slept(self) -> None:
        """After a sleep the next keep() refreshes, however short the sleep seemed."""
        self.refreshed_at = float("-inf")

    def mark(self, delivery: Delivery, status: str, error: str = "") -> bool:
        """mark() on this runner's claim; a final status (or a lost claim) drops the delivery."""
        kept = mark(delivery, self.runner, status, error)
        if status != Delivery.Status.PENDING or not kept:
            self.ids.discard(delivery.pk)
        return kept


def deliver(delivery: Delivery, connection: BaseEmailBackend, sleep: Sleep, claimed: Claimed) -> str:
    """Send one claimed delivery, retrying transient errors; return SENT, FAILED, DEFERRED or BUSY.

    BUSY means the claim was lost (taken over after it expired): the ledger
    is left as the other runner writes it. Raises Stop or
    SmtpConfigurationError when the run must end.
    """
    try:
        validate_email(delivery.recipient)
    except ValidationError:
        if not claimed.mark(delivery, Delivery.Status.FAILED, f"invalid address: {delivery.recipient!r}"):
            return BUSY
        logger.warning("batch email recipient=%s failed: invalid address", delivery.recipient)
        return FAILED
    message = build_message(delivery, connection)
    max_attempts = settings.BULK_EMAIL_MAX_ATTEMPTS
    for attempt in range(1, max_attempts + 1):
        if not claimed.keep(delivery):
            return BUSY
        try:
            connection.open()  # a no-op while the connection is up
            accepted = connection.send_messages([message])
        except Exception as exc:
            close_quietly(connection)
            kind = classify(exc)
            error = describe(exc)
            if kind in (FATAL, STOP):
                claimed.mark(delivery, Delivery.Status.PENDING, error)
                logger.error("batch email stopped: %s", error)
                if kind == FATAL:
                    raise configuration_error(exc) from exc
                raise Stop(
                    f"{error}: the server refused the sending account or the message, not the "
                    "recipient; remaining deliveries stay pending"
                ) from exc
            if kind == PERMANENT:
                if not claimed.mark(delivery, Delivery.Status.FAILED, error):
                    return BUSY
                logger.warning("batch email recipient=%s failed: %s", delivery.recipient, error)
                return FAILED
            if not claimed.mark(delivery, Delivery.Status.PENDING, error):  # also the pre-sleep refresh
                return BUSY
            logger.info(
                "batch email recipient=%s attempt %d/%d: %s",
                delivery.recipient, attempt, max_attempts, error,
            )
            if attempt < max_attempts:
                if not claimed.keep(delivery):
                    return BUSY
                sleep(backoff(attempt))
                claimed.slept()
            continue
        if accepted != 1:
            if not claimed.mark(delivery, Delivery.Status.FAILED, "the email backend did not send the message"):
                return BUSY
            return FAILED
        return SENT if claimed.mark(delivery, Delivery.Status.SENT) else BUSY
    return DEFERRED


def send_deliveries(
    delivery_ids: Sequence[int],
    connection: BaseEmailBackend | None = None,
    *,
    sleep: Sleep = time.sleep,
    runner: str | None = None,
) -> SendResult:
    """Send the still-pending deliveries among ``delivery_ids`` over one connection.

    The connection is opened once and reused; it is closed at the end only
    if this function created it. The batch is claimed first (claims.claim_batch,
    with the daily quota reserved in the same step); deliveries already sent
    or failed, or held by another live runner, are skipped, so calling this
    twice with the same ids, even at the same time, sends nobody twice.
    ``runner`` names the claimant (the rq job or Celery task id); each call
    adds a token of its own, because two executions of one job or task can
    run at once (a Redis broker redelivering a task that waited longer than
    the visibility timeout, a retry beside it): with one shared name, the copy
    that ends first would release the claims of the one still sending, and a
    third could send the same recipient again.
    """
    runner = claim_name(runner)
    ids = list(delivery_ids)
    result = SendResult()
    own_connection = connection is None
    if own_connection and (refusal := login_refusals.refused()):
        result.stopped = refusal
        result.deferred = Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING).count()
        logger.warning("batch email stopped: %s", refusal)
        return result
    connection = connection or prepare_connection(get_connection(fail_silently=False))
    try:
        handled: set[int] = set()
        while True:
            todo = [pk for pk in ids if pk not in handled]
            freed = _claim_and_send(todo, runner, connection, sleep, result, handled)
            # Quota-limited and some reserved ones ended without sending (failed, lost): their
            # reservation is free again, so claim once more from what this run has not handled.
            if not freed or result.stopped is None or not result.stopped.startswith("daily quota"):
                break
            result.stopped = None
    except SmtpConfigurationError as exc:
        if own_connection and isinstance(exc.__cause__, smtplib.SMTPAuthenticationError):
            login_refusals.record(describe(exc.__cause__))
        raise
    finally:
        # Also on a fatal error or an interrupt: what this runner did not finish is free again.
        # Only a killed process skips this, and its claims expire (see claims).
        release_claims(ids, runner)
        if own_connection:
            close_quietly(connection)
    return result


def _claim_and_send(
    ids: list[int], runner: str, connection: BaseEmailBackend, sleep: Sleep,
    result: SendResult, handled: set[int],
) -> bool:
    """Claim what is free among ``ids`` (reserving the quota) and send it; add to ``result``.

    Returns True if the quota stopped the claim and some reserved deliveries ended without
    being sent (so a new claim may get more).
    """
    limit = quota.reservation_limit()
    claimed_from = time.monotonic()
    mine, room = claim_batch(ids, runner, limit)
    # Given ids that are pending but not ours: held by others, or beyond the quota's room.
    unclaimed = 0
    if len(mine) < len(ids):
        unclaimed = Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING).count() - len(mine)
    quota_stopped = bool(unclaimed and room == 0)
    if quota_stopped:
        result.stopped = quota.refusal(limit)
        result.deferred += unclaimed
    else:
        result.busy += unclaimed
    deliveries = list(Delivery.objects.filter(pk__in=mine).select_related("campaign").order_by("pk"))
    handled.update(mine)
    claimed = Claimed(runner, set(mine), claimed_from)
    quota_hook = quota.get_quota_hook()
    deferred_in_a_row = 0
    unsent_before = result.failed + result.busy
    for index, delivery in enumerate(deliveries):
        reason = quota_hook(delivery) if quota_hook else None
        if reason:
            result.stopped = reason
            result.deferred += len(deliveries) - index
            logger.warning("batch email campaign=%s stopped: %s", delivery.campaign_id, reason)
            return False
        try:
            outcome = deliver(delivery, connection, sleep, claimed)
        except Stop as stop:
            result.stopped = str(stop)
            result.deferred += len(deliveries) - index
            logger.warning("batch email campaign=%s stopped: %s", delivery.campaign_id, stop)
            return False
        result.add(outcome)
        if outcome == DEFERRED:
            release_claims([delivery.pk], runner)
            claimed.ids.discard(delivery.pk)
        deferred_in_a_row = deferred_in_a_row + 1 if outcome == DEFERRED else 0
        if deferred_in_a_row >= OUTAGE_AFTER:
            result.stopped = (
                f"SMTP server unavailable: {OUTAGE_AFTER} recipients in a row still failing "
                f"after {settings.BULK_EMAIL_MAX_ATTEMPTS} attempts; "
                "remaining deliveries stay pending"
            )
            result.deferred += len(deliveries) - index - 1
            logger.warning("batch email campaign=%s stopped: %s", delivery.campaign_id, result.stopped)
            return False
    if quota_stopped:
        logger.warning("batch email stopped: %s", result.stopped)
        if result.failed + result.busy > unsent_before:
            result.deferred -= unclaimed  # counted again by the next claim
            return True
    return False


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    """Split ids into consecutive batches of at most ``size``."""
    return [list(ids[start : start + size]) for start in range(0, len(ids), size)]


def pending_batches(campaign: Campaign) -> list[list[int]]:
    """The campaign's pending delivery ids in BULK_EMAIL_BATCH_SIZE batches, oldest first."""
    pending = campaign.deliveries.filter(status=Delivery.Status.PENDING).order_by("pk")
    return chunks(list(pending.values_list("pk", flat=True)), settings.BULK_EMAIL_BATCH_SIZE)


class DeliveriesPending(Exception):
    """Raised by a queued batch (rq job, celery task) that left deliveries pending, so the
    queue runs it again later; permanent failures are in the ledger and do not raise."""


def raise_if_pending(result: SendResult, campaign_id: object, number: int, total: int) -> None:
    """Turn a batch that left deliveries pending into DeliveriesPending (for the queue's retry)."""
    if result.pending or result.stopped:
        reason = result.stopped or (
            f"{result.deferred} deferred after transient errors, "
            f"{result.busy} claimed by another runner"
        )
        raise DeliveriesPending(
            f"campaign {campaign_id} batch {number}/{total}: {result.pending} pending ({reason})"
        )


JOB_PREFIX = "bulk_email"


def campaign_prefix(campaign_id: object) -> str:
    """The start of every queue job/task id of one campaign."""
    return f"{JOB_PREFIX}-{campaign_id}-"


def job_id(campaign: Campaign, number: int) -> str:
    """A job (rq) or task (celery) id naming its campaign, so they can be counted per campaign.

    The random tail keeps ids unique when a campaign is resumed while older
    jobs of it still exist (RQ would otherwise overwrite and run one twice).
    """
    return f"{campaign_prefix(campaign.id)}{number}-{secrets.token_hex(4)}"


def send_batch(
    campaign: Campaign,
    delivery_ids: Sequence[int],
    number: int,
    total: int,
    *,
    sleep: Sleep,
    runner: str | None = None,
) -> SendResult:
    """Send one batch and log the line operators grep for ("batch email")."""
    result = send_deliveries(delivery_ids, sleep=sleep, runner=runner)
    logger.info(
        "batch email campaign=%s batch=%d/%d sent=%d failed=%d pending=%d",
        campaign.id, number, total, result.sent, result.failed, result.pending,
    )
    return result


def send_campaign(campaign: Campaign, *, sleep: Sleep = time.sleep) -> CampaignRun:
    """Send all pending deliveries of a campaign now, batch after batch.

    Batches are BULK_EMAIL_BATCH_SIZE messages over one connection each,
    BULK_EMAIL_BATCH_DELAY seconds apart, to stay under providers' rate
    limits. ``sleep`` is injectable so tests do not wait.
    """
    batches = pending_batches(campaign)
    run = CampaignRun(campaign_id=str(campaign.id))
    for number, batch in enumerate(batches, start=1):
        if number > 1 and settings.BULK_EMAIL_BATCH_DELAY:
            sleep(settings.BULK_EMAIL_BATCH_DELAY)
        run.results.append(send_batch(campaign, batch, number, len(batches), sleep=sleep))
        run.batches = number
        if run.stopped:
            break
    run.counts = campaign.counts()
    logger.info(
        "batch email campaign=%s finished batches=%d/%d sent=%d failed=%d pending=%d%s",
        campaign.id, run.batches, len(batches), run.counts["sent"], run.counts["failed"],
        run.counts["pending"], f" stopped: {run.stopped}" if run.stopped else "",
    )
    return run
