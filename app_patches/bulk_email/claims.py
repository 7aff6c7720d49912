"""Claims and the ledger's marks: every write a compare-and-set on the runner's claim.

A runner *claims* a pending delivery (claimed_by = its name, claimed_at =
the database's clock) before it sends it; the claim protects the delivery
from other runners for BULK_EMAIL_CLAIM_TIMEOUT after its last refresh.

Rules, and why:

* Claiming is one conditional UPDATE (status pending AND unclaimed or
  expired). The database serialises concurrent UPDATEs of a row (SQLite
  takes its write lock, PostgreSQL re-checks the WHERE after waiting for
  the row lock), so exactly one runner gets each row. A batch is claimed in
  one statement.
* Every later write is a compare-and-set on the claim (claimed_by = this
  runner AND status pending): the refresh before each attempt and before a
  backoff sleep, and the marks after an attempt. A runner whose claim was
  taken over (it outlived its claim) gets a row count of 0, logs it and
  leaves the ledger alone: it can never turn another runner's SENT back
  into PENDING and send again.
* Claim times are the database's clock (Now() in the UPDATE), never the
  host's: two hosts whose clocks disagree still agree on expiry.
* A claim name ends with this execution's token: a machine identity (the
  hash of /etc/machine-id, the boot id, the pid namespace and the host
  name), the pid and a random part. A claim whose holder ran on this same
  machine, boot and pid namespace and whose pid is gone is taken over at
  once (a killed Celery pool child, whose task comes back at once); any
  other claim waits for its expiry. Cloned VMs share a host name but not
  a boot id, so they never mistake each other's live processes for dead
  ones. Names are bounded to the column (varchar(128)): a long prefix
  (task id, host name) is shortened with a hash.
"""
import functools
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connections, router, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, QuerySet
from django.db.models.functions import Now

from .models import Delivery

logger = logging.getLogger("bulk_email")

CLAIM_NAME_MAX = Delivery._meta.get_field("claimed_by").max_length
IDENTITY_FILES = ("/etc/machine-id", "/proc/sys/kernel/random/boot_id")
# pg_advisory_xact_lock key of the quota reservation ("bulk_email" in ASCII, truncated).
QUOTA_LOCK = 0x62756C6B5F656D


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@functools.cache
def machine_identity() -> str:
    """12 hex digits naming this machine, boot and pid namespace (see module doc)."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    parts = [*(_read(path) for path in IDENTITY_FILES), namespace, socket.gethostname()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def default_runner() -> str:
    """The claim name of a runner outside rq/celery: host and pid, enough to find it in the logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def execution_token() -> str:
    """This execution's part of a claim name: machine identity, pid and a random token."""
    return f"{machine_identity()}:{os.getpid()}:{secrets.token_hex(4)}"


def claim_name(runner: str | None) -> str:
    """``runner#token``, at most CLAIM_NAME_MAX characters whatever the runner's name."""
    token = execution_token()
    prefix = runner or default_runner()
    room = CLAIM_NAME_MAX - len(token) - 1
    if len(prefix) > room:
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        prefix = f"{prefix[: room - len(digest) - 1]}~{digest}"
    return f"{prefix}#{token}"


def holder_is_dead(claimed_by: str) -> bool:
    """True if a claim's holder was a process of this machine (identity) that no longer exists.

    Only a definite answer counts: another machine, a name without a pid, or
    a process we may not signal (another user's) is treated as alive, and its
    claim waits for BULK_EMAIL_CLAIM_TIMEOUT.
    """
    _, _, token = claimed_by.rpartition("#")
    machine, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if machine != machine_identity() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def expiry() -> ExpressionWrapper:
    """The database's now minus BULK_EMAIL_CLAIM_TIMEOUT: claims older than this are expired."""
    return ExpressionWrapper(
        Now() - timedelta(seconds=settings.BULK_EMAIL_CLAIM_TIMEOUT), output_field=DateTimeField()
    )


def claimable(ids: Iterable[int]) -> QuerySet:
    """Pending deliveries among ``ids`` that nobody holds or whose claim expired."""
    return Delivery.objects.filter(pk__in=list(ids), status=Delivery.Status.PENDING).filter(
        Q(claimed_at__isnull=True) | Q(claimed_at__lt=expiry())
    )


def owned(ids: Iterable[int], runner: str) -> QuerySet:
    """The deliveries among ``ids`` that ``runner`` still holds."""
    return Delivery.objects.filter(pk__in=list(ids), status=Delivery.Status.PENDING, claimed_by=runner)


def _take_from_dead_holders(ids: Sequence[int], runner: str, room: int | None) -> list[int]:
    """Take over the claims among ``ids`` whose holders died on this machine (CAS on the holder)."""
    taken: list[int] = []
    held = Delivery.objects.filter(
        pk__in=list(ids), status=Delivery.Status.PENDING, claimed_at__isnull=False
    ).exclude(claimed_by=runner).values_list("pk", "claimed_by", "recipient")
    for pk, holder, recipient in held:
        if room is not None and len(taken) >= room:
            break
        if holder and holder_is_dead(holder) and Delivery.objects.filter(
            pk=pk, status=Delivery.Status.PENDING, claimed_by=holder
        ).update(claimed_by=runner, claimed_at=Now()):
            logger.warning("batch email recipient=%s reclaimed from %s (process gone)", recipient, holder)
            taken.append(pk)
    return taken


def _lock_quota(alias: str) -> None:
    """Serialise quota reservations: PostgreSQL's transaction-scoped advisory lock.

    SQLite needs none: a write transaction holds the database's one write lock
    (the project opens them IMMEDIATE).
    """
    if connections[alias].vendor == "postgresql":
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [QUOTA_LOCK])


def reserved_in_last_day() -> int:
    """Messages sent in the last 24 h plus deliveries under a live claim (about to be sent)."""
    day = ExpressionWrapper(Now() - timedelta(days=1), output_field=DateTimeField())
    return Delivery.objects.filter(
        Q(status=Delivery.Status.SENT, sent_at__gte=day)
        | Q(status=Delivery.Status.PENDING, claimed_at__gte=expiry())
    ).count()


def claim_batch(ids: Sequence[int], runner: str, limit: int = 0) -> tuple[list[int], int | None]:
    """Claim what is free among ``ids`` for ``runner``; return (claimed ids, quota room left).

    With a ``limit`` (BULK_EMAIL_DAILY_QUOTA), the claim is also the quota
    reservation: under one lock, it counts sent-in-24-h plus live claims and
    claims no more than the rest of the limit, so N concurrent senders can
    never overshoot it. The room returned is None without a limit.
    """
    alias = router.db_for_write(Delivery)
    with transaction.atomic(using=alias):
        room: int | None = None
        if limit:
            _lock_quota(alias)
            room = max(limit - reserved_in_last_day(), 0)
        free = claimable(ids).order_by("pk")
        if room is not None:
            free = Delivery.objects.filter(pk__in=list(free.values_list("pk", flat=True)[:room]))
        free.update(claimed_by=runner, claimed_at=Now())
        mine = set(owned(ids, runner).values_list("pk", flat=True))
        left = None if room is None else room - len(mine)
        mine.update(_take_from_dead_holders([pk for pk in ids if pk not in mine], runner, left))
    left = None if room is None else room - len(mine)
    return sorted(mine), left


def claim(delivery: Delivery, runner: str) -> bool:
    """Take one pending delivery for ``runner``; False if another live runner holds it."""
    mine, _ = claim_batch([delivery.pk], runner)
    if mine and delivery.claimed_at is not None and delivery.claimed_by != runner:
        logger.warning(
            "batch email recipient=%s reclaimed from %s (claimed at %s, runner presumed dead)",
            delivery.recipient, delivery.claimed_by, delivery.claimed_at.isoformat(),
        )
    return bool(mine)


def refresh(ids: Sequence[int], runner: str) -> set[int]:
    """Renew ``runner``'s claims among ``ids`` (CAS); return the ids it still holds.

    Called before every attempt and before every backoff sleep, so a live
    runner's claims never expire while it works on the batch.
    """
    ids = list(ids)
    renewed = owned(ids, runner).update(claimed_at=Now())
    if renewed == len(ids):
        return set(ids)
    kept = set(owned(ids, runner).values_list("pk", flat=True))
    for pk in sorted(set(ids) - kept):
        logger.error("batch email delivery=%s lost claim of %s (taken over or finished by another "
                     "runner); this runner leaves it alone", pk, runner)
    return kept


def mark(delivery: Delivery, runner: str, status: str, error: str = "") -> bool:
    """Record one attempt, committed at once (autocommit), only while ``runner`` holds the claim.

    A final status ends the claim (claimed_at NULL, claimed_by kept as the
    sender's name); a retryable attempt keeps it and refreshes claimed_at.
    Returns False, having changed nothing, if the claim was lost.
    """
    changes: dict = {"attempts": F("attempts") + 1, "last_error": error, "status": status}
    changes["claimed_at"] = Now() if status == Delivery.Status.PENDING else None
    if status == Delivery.Status.SENT:
        changes["sent_at"] = Now()
    if owned([delivery.pk], runner).update(**changes):
        return True
    logger.error(
        "batch email recipient=%s: %s lost its claim before recording %s%s; ledger left as the "
        "runner that took over wrote it", delivery.recipient, runner, status, f" ({error})" if error else "",
    )
    return False


def release_claims(delivery_ids: Sequence[int], runner: str) -> None:
    """Drop the claims ``runner`` still holds among ``delivery_ids`` (run ended or failed)."""
    owned(delivery_ids, runner).update(claimed_by="", claimed_at=None)
