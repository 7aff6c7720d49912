"""The queue switch's hold file: which mode a switch in progress goes to (bulk_email.switch).

A module of its own because both sides of a switch read it and neither may
import the other: dispatch holds campaigns while it is there, create_campaign
creates them in the mode it names, and switch (which dispatches the held
campaigns) imports dispatch.
"""
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .modes.table import NAMES


def held_mode() -> str | None:
    """The mode a switch in progress goes to (the hold file's content), or None.

    None when BULK_EMAIL_HOLD_FILE is unset or the file does not exist. Any
    other content than a known mode is an error rather than "no switch":
    sending while a switch half-happened is exactly what the file prevents.
    """
    path = settings.BULK_EMAIL_HOLD_FILE
    if not path:
        return None
    try:
        content = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImproperlyConfigured(
            f"cannot read the queue switch hold file {path} (BULK_EMAIL_HOLD_FILE): {exc.strerror}"
        ) from None
    if content not in NAMES:
        raise ImproperlyConfigured(
            f"the queue switch hold file {path} (BULK_EMAIL_HOLD_FILE) must contain one of "
            f"{', '.join(NAMES)}, got {content!r}"
        )
    return content
