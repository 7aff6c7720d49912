#!/usr/bin/env python3
"""The Debian mirror the controller itself uses, for prepare-docker.sh's debootstrap.

`apt_sources.py main` prints the first Debian archive URI of the controller's apt sources and
`apt_sources.py security` the first URI it uses for a Debian `-security` suite; each prints
nothing when there is none (the caller then lets debootstrap use its own default, or leaves the
security line out). So the images are built from the mirror this machine is configured for,
and no mirror's name is written into the repository.

Read: /etc/apt/sources.list and /etc/apt/sources.list.d/*.list (one-line format) and
/etc/apt/sources.list.d/*.sources (deb822), in apt's order: sources.list first, then the
directory's files sorted by name. Only `deb` entries count (not deb-src), deb822 stanzas with
`Enabled: no` are skipped, and an entry is Debian's when one of its suites is a Debian release
name (codename or alias): an Ubuntu or third-party repository is never taken for Debian's.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

# Release codenames and aliases of Debian: what tells Debian's archive from other repositories.
DEBIAN_RELEASES = frozenset(
    "buzz rex bo hamm slink potato woody sarge etch lenny squeeze wheezy jessie stretch buster "
    "bullseye bookworm trixie forky duke sid stable oldstable oldoldstable testing unstable "
    "experimental".split()
)


def one_line_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of each `deb` line of a one-line-format file (options in [...] skipped)."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # deb [arch=amd64 signed-by=...] URI suite ...
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "deb":
            yield fields[1], [fields[2]]


def deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of each URI of each enabled `deb` stanza of a deb822 .sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # a continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            yield uri, suites


def entries(root: Path) -> Iterator[tuple[str, list[str]]]:
    """Every `deb` entry of the apt sources under `root` (normally /), in apt's order."""
    main = root / "etc/apt/sources.list"
    if main.is_file():
        yield from one_line_entries(main.read_text(errors="replace"))
    parts = root / "etc/apt/sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                yield from one_line_entries(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                yield from deb822_entries(path.read_text(errors="replace"))


def is_release(suite: str) -> bool:
    """A Debian release suite itself (`trixie`, `stable`), not `-updates` or `-security`."""
    return suite in DEBIAN_RELEASES


def is_security(suite: str) -> bool:
    """Debian's security suite of a release: `bookworm-security` (or the old `buster/updates`)."""
    release, separator, rest = suite.replace("/updates", "-security").partition("-")
    return bool(separator) and rest == "security" and release in DEBIAN_RELEASES


def first_uri(root: Path, kind: str) -> str:
    """The first URI of an entry with a suite of `kind` ("main" or "security"); "" when none."""
    wanted = is_release if kind == "main" else is_security
    for uri, suites in entries(root):
        if any(wanted(suite) for suite in suites):
            return uri.rstrip("/")
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("kind", choices=("main", "security"))
    parser.add_argument("--root", type=Path, default=Path("/"), help="read ROOT/etc/apt (tests)")
    args = parser.parse_args()
    uri = first_uri(args.root, args.kind)
    if uri:
        print(uri)


if __name__ == "__main__":
    main()
