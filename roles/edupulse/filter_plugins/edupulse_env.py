"""The one way the deployment writes an env file that systemd reads (EnvironmentFile=).

    {{ {'KEY': value, 'OTHER': value2} | edupulse_env }}

gives one line per key, `KEY="value"`, with value's `\\`, `"`, `$` and backtick escaped by a
backslash: systemd.exec(5) reads a double-quoted value as POSIX shell does, a backslash before
one of those four keeps that character, so any value comes back as it was (and a shell that
sources the file expands nothing). A line break cannot be written that way (systemd would let a
quoted value span lines, the file's other readers would not): it is refused, naming the key, as
is a key that is not a variable name. The roles that depend on roles/edupulse (edupulse_app,
rqworker, celery) load this filter with it.
"""
from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPE = re.compile(r'([\\"$`])')


def edupulse_env(assignments):
    """KEY="value" lines (joined by newlines, no trailing one) of a mapping, in its order."""
    if not isinstance(assignments, dict):
        raise AnsibleFilterError(f"edupulse_env expects a mapping of names to values, got {type(assignments).__name__}")
    lines = []
    for key, value in assignments.items():
        key = str(key)
        if not _KEY.match(key):
            raise AnsibleFilterError(f"env file variable {key!r} is not a variable name (letters, digits, _)")
        text = str(value)
        if "\n" in text or "\r" in text or "\0" in text:
            raise AnsibleFilterError(
                f"{key} contains a line break (or NUL), which an env file cannot hold: remove it from the value"
            )
        escaped = _ESCAPE.sub(r"\\\1", text)
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines)


class FilterModule:
    """edupulse_env: a mapping as the lines of a systemd EnvironmentFile=."""

    def filters(self):
        return {"edupulse_env": edupulse_env}
