"""batch mode's sender outside the web request: spool pokes and ``manage.py batch_sender``.

Batch mode has no broker, yet a web request must not send (a few hundred
recipients outlive Gunicorn's timeout). So a background dispatch only marks
the campaign dispatched and *pokes* the sender: an empty file named after
the campaign in BULK_EMAIL_BATCH_SPOOL_DIR. The deployment runs
``manage.py batch_sender`` from three systemd units:

* ``edupulse-batch-sender.path`` (DirectoryNotEmpty= on the spool dir)
  starts the service as soon as a poke appears;
* ``edupulse-batch-sender.timer`` starts it every minute, for what a pass
  left pending (SMTP outage, throttling, the daily quota) and for a lost
  poke; so leftovers go out later without an operator;
* ``edupulse-batch-sender.service`` (oneshot) runs one pass and exits.

A pass first deletes the pokes it sees (a poke arriving during the pass is
a new file, and systemd starts the service again), then sends every
dispatched batch campaign that still has pending deliveries, oldest first,
with sending.send_campaign's semantics (BULK_EMAIL_BATCH_SIZE per batch,
BULK_EMAIL_BATCH_DELAY apart, one connection per batch, retries, quota).
A campaign that stops early (quota, outage) ends the pass: the next
campaign would only hit the same wall. Held campaigns (dispatched_at NULL
during a queue mode switch) are never taken: they are dispatch-held's.
The ledger's claims make two overlapping passes (timer and path at once,
``--watch`` beside systemd) send nobody twice.

``watch`` is the same loop for a developer's runserver or launchd: the
spool every ``poll`` seconds, the ledger every ``interval`` seconds.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.db.models import QuerySet

from .models import Campaign, Delivery
from .sending import Sleep, send_campaign

logger = logging.getLogger("bulk_email")

MODE = "batch"


def spool_dir() -> Path | None:
    """BULK_EMAIL_BATCH_SPOOL_DIR as a Path, or None when pokes are off."""
    return Path(settings.BULK_EMAIL_BATCH_SPOOL_DIR) if settings.BULK_EMAIL_BATCH_SPOOL_DIR else None


def poke(campaign_id: object) -> bool:
    """Drop the empty file ``<spool>/<campaign id>`` that starts the sender; False if none was written.

    Never raises: a dispatched campaign is in the ledger whatever happens
    here, and the sender's timer finds it within a minute, so a missing or
    unwritable spool dir costs latency, not an email (and not the request).
    """
    directory = spool_dir()
    if directory is None:
        logger.info("batch email campaign=%s dispatched; no BULK_EMAIL_BATCH_SPOOL_DIR, "
                    "the batch sender's next timer pass sends it", campaign_id)
        return False
    try:
        fd = os.open(directory / str(campaign_id), os.O_WRONLY | os.O_CREAT, 0o640)
        os.close(fd)
    except OSError as exc:
        logger.warning("batch email campaign=%s cannot poke the batch sender in %s (%s); "
                       "its next timer pass sends it", campaign_id, directory, exc.strerror)
        return False
    logger.info("batch email campaign=%s handed to the batch sender", campaign_id)
    return True


def pending_pokes() -> list[Path]:
    """The poke files in the spool dir now (none without one)."""
    directory = spool_dir()
    if directory is None:
        return []
    try:
        return sorted(path for path in directory.iterdir() if not path.name.startswith("."))
    except FileNotFoundError:
        return []


def take_pokes() -> int:
    """Delete the pokes present; return how many. Done before sending, so later pokes count again."""
    taken = 0
    for path in pending_pokes():
        try:
            path.unlink()
            taken += 1
        except FileNotFoundError:  # another pass took it
            pass
    return taken


def due_campaigns() -> QuerySet[Campaign]:
    """Dispatched batch campaigns with pending deliveries, oldest first (held ones excluded)."""
    pending = Delivery.objects.filter(status=Delivery.Status.PENDING).values("campaign_id")
    return Campaign.objects.filter(
        mode=MODE, dispatched_at__isnull=False, pk__in=pending
    ).order_by("created_at")


def run_pass(*, sleep: Sleep = time.sleep) -> dict:
    """One pass: take the pokes, send the due campaigns; a summary for the command's output.

    Fatal SMTP errors (login rejected, no STARTTLS) propagate: the command
    turns them into a one-line error and a non-zero exit.
    """
    summary: dict = {"pokes": take_pokes(), "campaigns": 0, "sent": 0, "failed": 0, "pending": 0,
                     "stopped": None}
    for campaign in list(due_campaigns()):
        before = campaign.counts()
        run = send_campaign(campaign, sleep=sleep)
        summary["campaigns"] += 1
        summary["sent"] += run.counts["sent"] - before["sent"]
        summary["failed"] += run.counts["failed"] - before["failed"]
        summary["pending"] += run.counts["pending"]
        if run.stopped:
            summary["stopped"] = run.stopped
            break
    logger.info(
        "batch email sender pass pokes=%d campaigns=%d sent=%d failed=%d pending=%d%s",
        summary["pokes"], summary["campaigns"], summary["sent"], summary["failed"],
        summary["pending"], f" stopped: {summary['stopped']}" if summary["stopped"] else "",
    )
    return summary


def watch(
    *,
    interval: float = 60,
    poll: float = 1,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_pass: Callable[[dict], None] = lambda summary: None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run passes forever: at start, when a poke appears (checked every ``poll`` s), and every
    ``interval`` s. For development (runserver, launchd) where no systemd units run."""
    last = None
    while not stop():
        if last is None or pending_pokes() or clock() - last >= interval:
            close_old_connections()  # a long-lived process: drop connections the server closed
            on_pass(run_pass(sleep=sleep))
            last = clock()
        sleep(poll)
