"""Sending a campaign in batches over one reused SMTP connection per batch.

The unit of work is :func:`send_deliveries`: "send these delivery ids over
one connection". Batch mode calls it once per batch, in process; the rq and
celery modes will enqueue the same call, one job per batch.

Rules, and why:

* Each message is sent on its own (``send_messages([one])``) and its
  delivery is marked sent right after the server accepted it. Django's
  ``send_messages(list)`` only returns a count, so after a failure nobody
  could tell which ones got through; sending them again would mail people
  twice.
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
* Permanent errors (SMTP 5xx, refused recipient, invalid address) mark
  the delivery failed with the error; it is not retried and sending goes
  on with the next recipient.
* A rejected login (SMTP 5xx on AUTH) or a server without STARTTLS is a
  configuration problem affecting every message: the run stops with the
  exception and all unsent deliveries stay pending.
* Before each message the quota hook is asked; when it refuses, the run
  stops and the rest stays pending.
* Before each message the runner *claims* the delivery (see :func:`claim`),
  so two runners given the same ids (an rq job run twice, two overlapping
  ``--resume`` runs) never both send it. A delivery claimed by another live
  runner is skipped and counted as ``busy``: it stays pending.

The one window that cannot be closed: the server has answered 250 but the
process dies before the UPDATE that marks the delivery sent has committed.
The ledger still says pending, the claim expires after
BULK_EMAIL_CLAIM_TIMEOUT, and the message is sent a second time. The mark
is therefore its own autocommitted UPDATE issued right after the reply (no
surrounding transaction, nothing else in between), which shrinks the window
to one database write; and the Message-ID is stable per delivery, so
receiving systems can drop the copy.
"""
import functools
import logging
import os
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.core.mail.utils import DNS_NAME
from django.core.validators import validate_email
from django.db.models import F, Q
from django.utils import timezone

from .models import Campaign, Delivery
from .quota import get_quota_hook

logger = logging.getLogger("bulk_email")

CAMPAIGN_HEADER = "X-EduPulse-Campaign"
OUTAGE_AFTER = 3

Sleep = Callable[[float], None]

SENT, FAILED, DEFERRED, BUSY = "sent", "failed", "deferred", "busy"
TRANSIENT, PERMANENT, FATAL = "transient", "permanent", "fatal"


@dataclass
class SendResult:
    """What one call of send_deliveries did; ``stopped`` says why it ended early, if it did."""

    sent: int = 0
    failed: int = 0
    deferred: int = 0
    busy: int = 0  # claimed by another runner that is still within the claim timeout
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


def classify(exc: Exception) -> str:
    """Say whether an error from one send is TRANSIENT, PERMANENT or FATAL (see module doc)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return TRANSIENT if codes and all(400 <= code < 500 for code in codes) else PERMANENT
    if isinstance(exc, smtplib.SMTPResponseException):
        if 400 <= exc.smtp_code < 500:
            return TRANSIENT
        return FATAL if isinstance(exc, smtplib.SMTPAuthenticationError) else PERMANENT
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return FATAL
    if isinstance(exc, OSError):  # SMTPServerDisconnected, timeouts, refused/reset connections
        return TRANSIENT
    if isinstance(exc, (ValueError, ValidationError)):  # address Django cannot encode
        return PERMANENT
    raise exc


def describe(exc: Exception) -> str:
    """Render an error for the ledger, with the SMTP code and text when there is one."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, text = next(iter(exc.recipients.values()))
        return f"{type(exc).__name__}: {code} {_text(text)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
    return f"{type(exc).__name__}: {exc}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The client TLS context of this process's SMTP connections, built once per process.

    Django's SMTP backend builds ``ssl.create_default_context()`` for every
    connection, i.e. every batch, and loading the system trust store is most
    of that: 40-80 ms on a 2-core server, 2-4 ms per message at 20 messages
    per batch (bench/, README "Benchmarks"). One context per process checks
    exactly the same (chain and host name against the system trust store); a
    CA added to the trust store is seen once the process restarts.
    """
    return ssl.create_default_context()


def share_tls_context(connection: BaseEmailBackend) -> BaseEmailBackend:
    """Give a Django SMTP connection this process's TLS context (see tls_context).

    Only where Django would build that same default context itself: a backend
    with a client certificate (EMAIL_SSL_CERTFILE/KEYFILE) or another backend
    class keeps its own behaviour.
    """
    if isinstance(connection, SMTPBackend) and not (connection.ssl_certfile or connection.ssl_keyfile):
        connection.ssl_context = tls_context()  # Django's cached_property: the instance's value wins
    return connection


def preload() -> None:
    """Load what sending needs (SMTP backend, TLS trust store) now rather than at the first send.

    For processes that fork a child per job (rq's work-horses): the children
    inherit it instead of each loading it again (bulk_email.rq_worker).
    """
    get_connection(fail_silently=False)
    tls_context()


def close_quietly(connection: BaseEmailBackend) -> None:
    """Close a connection that may already be broken; errors here change nothing."""
    try:
        connection.close()
    except (smtplib.SMTPException, OSError):
        pass


def default_runner() -> str:
    """The claim name of a runner outside rq: host and pid, enough to find it in the logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def execution_token() -> str:
    """This execution's part of a claim name: host, pid and a random token.

    Host and pid let a runner on the same host see at once that the holder
    of a claim is gone (a killed Celery pool child, whose task comes back at
    once): see ``holder_is_dead``.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def holder_is_dead(claimed_by: str) -> bool:
    """True if a claim's holder was a process on this host that no longer exists.

    Only a definite answer counts: another host, a name without a pid, or a
    process we may not signal (another user's) is treated as alive, and its
    claim waits for BULK_EMAIL_CLAIM_TIMEOUT as before.
    """
    _, _, token = claimed_by.rpartition("#")
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def claim(delivery: Delivery, runner: str) -> bool:
    """Atomically take a pending delivery for ``runner``; False if another runner holds it.

    One UPDATE ... WHERE status='pending' AND (unclaimed OR claim expired):
    the database serialises concurrent UPDATEs of a row (SQLite takes its
    write lock, PostgreSQL re-checks the WHERE after waiting for the row
    lock), so exactly one runner sees a row count of 1. This works the same
    on SQLite, which has no SELECT ... FOR UPDATE SKIP LOCKED.

    A claim older than BULK_EMAIL_CLAIM_TIMEOUT belongs to a runner that was
    killed between claiming and marking (SIGKILL, OOM, power loss), because
    a live runner refreshes claimed_at on every attempt (see _mark). Taking
    it over is what keeps such a delivery from being lost.
    """
    now = timezone.now()
    expired = now - timedelta(seconds=settings.BULK_EMAIL_CLAIM_TIMEOUT)
    taken = (
        Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.PENDING)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=expired))
        .update(claimed_by=runner, claimed_at=now)
    )
    if not taken:
        # The holder was killed on this host (a Celery pool child): take its claim now instead of
        # after the timeout. The UPDATE matches the dead holder's name, so only one runner wins.
        holder = Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.PENDING).values_list(
            "claimed_by", flat=True).first()
        if holder and holder_is_dead(holder):
            taken = Delivery.objects.filter(
                pk=delivery.pk, status=Delivery.Status.PENDING, claimed_by=holder
            ).update(claimed_by=runner, claimed_at=now)
            if taken:
                logger.warning("batch email recipient=%s reclaimed from %s (process gone)",
                               delivery.recipient, holder)
                return True
    if taken and delivery.claimed_at is not None:
        logger.warning(
            "batch email recipient=%s reclaimed from %s (claimed at %s, runner presumed dead)",
            delivery.recipient, delivery.claimed_by, delivery.claimed_at.isoformat(),
        )
    return bool(taken)


def release_claims(delivery_ids: Sequence[int], runner: str) -> None:
    """Drop the claims ``runner`` still holds among ``delivery_ids`` (run ended or failed)."""
    Delivery.objects.filter(
        pk__in=list(delivery_ids), status=Delivery.Status.PENDING, claimed_by=runner
    ).update(claimed_by="", claimed_at=None)


def _mark(delivery: Delivery, status: str, error: str = "") -> None:
    """Record one attempt in the ledger, committed at once (autocommit).

    A final status ends the claim (claimed_at NULL, claimed_by kept as the
    sender's name); a retryable attempt keeps it and refreshes claimed_at,
    so a slow but live runner is never mistaken for a dead one.
    """
    now = timezone.now()
    changes: dict = {"attempts": F("attempts") + 1, "last_error": error, "status": status}
    changes["claimed_at"] = now if status == Delivery.Status.PENDING else None
    if status == Delivery.Status.SENT:
        changes["sent_at"] = now
    Delivery.objects.filter(pk=delivery.pk).update(**changes)


def deliver(delivery: Delivery, connection: BaseEmailBackend, sleep: Sleep) -> str:
    """Send one delivery, retrying transient errors; return SENT, FAILED or DEFERRED."""
    try:
        validate_email(delivery.recipient)
    except ValidationError:
        _mark(delivery, Delivery.Status.FAILED, f"invalid address: {delivery.recipient!r}")
        logger.warning("batch email recipient=%s failed: invalid address", delivery.recipient)
        return FAILED
    message = build_message(delivery, connection)
    max_attempts = settings.BULK_EMAIL_MAX_ATTEMPTS
    for attempt in range(1, max_attempts + 1):
        try:
            connection.open()  # a no-op while the connection is up
            accepted = connection.send_messages([message])
        except Exception as exc:
            close_quietly(connection)
            kind = classify(exc)
            error = describe(exc)
            if kind == FATAL:
                _mark(delivery, Delivery.Status.PENDING, error)
                logger.error("batch email stopped: %s", error)
                raise
            if kind == PERMANENT:
                _mark(delivery, Delivery.Status.FAILED, error)
                logger.warning("batch email recipient=%s failed: %s", delivery.recipient, error)
                return FAILED
            _mark(delivery, Delivery.Status.PENDING, error)
            logger.info(
                "batch email recipient=%s attempt %d/%d: %s",
                delivery.recipient, attempt, max_attempts, error,
            )
            if attempt < max_attempts:
                sleep(backoff(attempt))
            continue
        if accepted != 1:
            _mark(delivery, Delivery.Status.FAILED, "the email backend did not send the message")
            return FAILED
        _mark(delivery, Delivery.Status.SENT)
        return SENT
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
    if this function created it. Deliveries already sent or failed are
    skipped, and each one is claimed before it is sent, so calling this
    twice with the same ids, even at the same time, sends nobody twice.
    ``runner`` names the claimant (the rq job or Celery task id); each call
    adds a token of its own, because two executions of one job or task can
    run at once (a Redis broker redelivering a task that waited longer than
    the visibility timeout, a retry beside it): with one shared name, the copy
    that ends first would release the claims of the one still sending, and a
    third could send the same recipient again.
    """
    runner = f"{runner or default_runner()}#{execution_token()}"
    deliveries = (
        Delivery.objects.filter(pk__in=list(delivery_ids), status=Delivery.Status.PENDING)
        .select_related("campaign")
        .order_by("pk")
    )
    own_connection = connection is None
    connection = connection or share_tls_context(get_connection(fail_silently=False))
    quota_hook = get_quota_hook()
    result = SendResult()
    deferred_in_a_row = 0
    try:
        for delivery in deliveries:
            reason = quota_hook(delivery)
            if reason:
                result.stopped = reason
                logger.warning("batch email campaign=%s stopped: %s", delivery.campaign_id, reason)
                break
            if not claim(delivery, runner):
                result.add(BUSY)
                continue
            outcome = deliver(delivery, connection, sleep)
            result.add(outcome)
            if outcome == DEFERRED:
                release_claims([delivery.pk], runner)
            deferred_in_a_row = deferred_in_a_row + 1 if outcome == DEFERRED else 0
            if deferred_in_a_row >= OUTAGE_AFTER:
                result.stopped = (
                    f"SMTP server unavailable: {OUTAGE_AFTER} recipients in a row still failing "
                    f"after {settings.BULK_EMAIL_MAX_ATTEMPTS} attempts; "
                    "remaining deliveries stay pending"
                )
                logger.warning(
                    "batch email campaign=%s stopped: %s", delivery.campaign_id, result.stopped
                )
                break
    finally:
        # Also on a fatal error or an interrupt: what this runner did not finish is free again.
        # Only a killed process skips this, and its claims expire (see claim).
        release_claims(delivery_ids, runner)
        if own_connection:
            close_quietly(connection)
    return result


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
