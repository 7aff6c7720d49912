"""The queue modes, one module each: batch, rq and celery.

Everything that differs between the modes lives in its module, behind the
interface of modes.base.QueueMode: how a campaign is handed over, what its
status and the queue's status add, how retry_failed re-dispatches, what
send_campaign advises and says of leftovers, which mode-specific commands
apply (setup_periodic_tasks, rq_maintenance), the mode's settings and the
apps, URLs and Celery app it needs of the project (modes.table, which
apply.py reads too). The rest of the app asks ``get(name)`` instead of
comparing mode names (tests/test_modes.py checks that).
"""
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from . import batch, celery, rq
from .base import QueueMode, RetryRun
from .table import NAMES

MODES: dict[str, QueueMode] = {mode.name: mode for mode in (batch.MODE, rq.MODE, celery.MODE)}

__all__ = ["MODES", "NAMES", "QueueMode", "RetryRun", "get", "names_where"]


def get(name: str) -> QueueMode:
    """The mode called ``name``; ImproperlyConfigured for a mode this version cannot run.

    Loud rather than a fallback: a campaign of an unknown mode must not be
    sent inline by whatever mode happens to run.
    """
    try:
        return MODES[name]
    except KeyError:
        raise ImproperlyConfigured(
            f"queue mode {name!r} is not implemented in this version of bulk_email "
            f"(known: {', '.join(MODES)})"
        ) from None


def names_where(wanted: Callable[[QueueMode], bool]) -> list[str]:
    """The names of the modes that have what ``wanted`` asks for, for a command's refusal
    (``setup_periodic_tasks needs BULK_EMAIL_QUEUE_MODE=celery``) that names them without a list
    of its own to forget."""
    return [name for name, mode in MODES.items() if wanted(mode)]
