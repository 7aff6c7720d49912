"""Reading settings from the environment: numbers, booleans, lists and service URLs, checked.

Shared by bulk_email.settings and the mode modules (bulk_email.modes), which
read their own variables; every error names the variable, because a typo such
as BULK_EMAIL_BATCH_SIZE=2O would otherwise surface in the middle of a send.
"""
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured


def number(env: Mapping[str, str], name: str, default: float, kind: type) -> Any:
    """Parse ``env[name]`` as ``kind`` (int or float), naming the variable on failure."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ImproperlyConfigured(f"{name} must be {noun}, got {raw!r}") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Parse ``env[name]`` as true/false (the project's spellings), refusing typos such as 'ture'."""
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def at_least(name: str, value: float, minimum: float) -> None:
    """Reject values below ``minimum`` with a message naming the variable."""
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")


def intervals(env: Mapping[str, str], name: str, default: list[int]) -> list[int]:
    """Parse a comma-separated list of whole seconds (>= 0), naming the variable on failure."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = [int(item) for item in raw.split(",")]
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be comma-separated whole seconds such as 10,30,60, got {raw!r}"
        ) from None
    if any(value < 0 for value in values):
        raise ImproperlyConfigured(f"{name} must not contain negative seconds, got {raw!r}")
    return values


def service_url(env: Mapping[str, str], name: str, mode: str, schemes: tuple[str, ...], example: str) -> str:
    """Return the URL in ``env[name]``, required in ``mode``, with one of ``schemes``.

    The error messages never repeat the URL: it carries a password.
    """
    url = env.get(name, "").strip()
    if not url:
        raise ImproperlyConfigured(f"{name} must be set when BULK_EMAIL_QUEUE_MODE={mode}, e.g. {example}")
    scheme = urlsplit(url).scheme
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} must start with one of {', '.join(s + '://' for s in schemes)} (got scheme {scheme!r})"
        )
    return url
