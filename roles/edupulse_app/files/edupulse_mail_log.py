#!/usr/bin/python3
"""Count the emails the EduPulse services sent and failed in a time range, from journald.

    sudo edupulse-mail-log [--since '1 hour ago'] [--until now] [--campaign ID] [--unit PATTERN]... [--json]

Every sender of bulk_email (batch mode in Gunicorn or a command's unit, the rq
workers, the celery worker) logs one line per batch it ran:

    batch email campaign=<uuid> batch=<n>/<total> sent=<n> failed=<n> pending=<n>

Summing those lines gives what really went out in the range, whichever mode
ran it: a batch retried by the queue logs again, but only with what that run
sent (the ledger skips what was sent before), so nothing is counted twice.
"pending" of a line is what that run left for a retry (deferred). Lines with
"stopped:" (an SMTP outage, the daily quota) are counted as stops.

Output: a header line with the range, one line
``sent=<n> failed=<n> deferred=<n> batches=<n> campaigns=<n> stops=<n> requeued=<n>``
and one ``campaign <uuid> sent=<n> failed=<n> deferred=<n> batches=<n>`` line
per campaign; --json prints one JSON object instead (the same totals, plus
"by_campaign" and "by_unit"). --since/--until take journalctl's time syntax
("1 hour ago", "today", "2026-03-01 08:00", "@<unix seconds>").

Which entries: those of every edupulse-* unit (edupulse-gunicorn,
edupulse-rqworker@N, edupulse-celery...; --unit replaces the pattern), and
those of an ``edupulse-manage`` command whose output went to the journal (it
runs in a transient run-uN.service, tagged edupulse-manage), as in
``systemd-run --unit=edupulse-send-<name> edupulse-manage send_campaign ...``,
the way to start a long batch-mode campaign that outlives the SSH session. A
campaign run in a terminal with edupulse-manage logs to that terminal only.
journalctl itself keeps only the "batch email" lines (--grep), so a long
range stays cheap; without PCRE2 support it falls back to reading them all.

Needs root (or the systemd-journal group) to read the system journal.
Standard library only: it must work without the app's virtualenv.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from fnmatch import fnmatch
from typing import Any

DEFAULT_UNITS = ["edupulse-*"]
# The tag of what edupulse-manage runs (its transient unit is run-uN.service).
MANAGE_IDENTIFIER = "edupulse-manage"
BATCH = re.compile(
    r"batch email campaign=(?P<campaign>\S+) batch=\d+/\d+ "
    r"sent=(?P<sent>\d+) failed=(?P<failed>\d+) pending=(?P<pending>\d+)"
)
STOPPED = re.compile(r"batch email campaign=(?P<campaign>\S+) stopped: ")
# rq_jobs.requeue_failed (one line per job), tasks.retry_failed_tasks (one per campaign).
REQUEUED = re.compile(r"batch email requeued (?:failed job=bulk_email-(?P<job>\S+)|campaign=(?P<campaign>\S+))")


def message_text(value: Any) -> str:
    """journalctl's JSON gives MESSAGE as a string, or as a list of bytes when not UTF-8."""
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def journal_command(args: argparse.Namespace, grep: bool = True) -> list[str]:
    command = ["journalctl", "--no-pager", "--output=json",
               "--output-fields=MESSAGE,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER"]
    if grep:
        command += ["--grep", "batch email"]
    if args.since:
        command += ["--since", args.since]
    if args.until:
        command += ["--until", args.until]
    return command


def read_journal(command: list[str]) -> list[dict[str, Any]] | None:
    """The matching journal entries; None if journalctl cannot --grep; SystemExit with
    journalctl's own message on a bad range."""
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SystemExit("edupulse-mail-log: journalctl not found (a systemd host is needed)") from None
    error = completed.stderr.strip()
    if completed.returncode != 0 and "--grep" in command and "pattern matching" in error:
        return None  # built without PCRE2
    # Nothing matched: exit 0 or (with --grep, newer versions) 1, and nothing printed.
    no_entries = not completed.stdout.strip() and (not error or "No entries" in error)
    if completed.returncode != 0 and not no_entries:
        raise SystemExit(f"edupulse-mail-log: journalctl failed: {error}")
    entries = []
    for line in completed.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def ours(entry: dict[str, Any], units: list[str]) -> bool:
    """An entry of one of the units, or of an edupulse-manage command (see the module doc)."""
    unit = entry.get("_SYSTEMD_UNIT") or ""
    return entry.get("SYSLOG_IDENTIFIER") == MANAGE_IDENTIFIER or any(fnmatch(unit, p) for p in units)


def summarise(entries: list[dict[str, Any]], campaign: str | None = None) -> dict[str, Any]:
    """Totals, per campaign and per unit, of the batch lines among ``entries``."""
    zero = {"sent": 0, "failed": 0, "deferred": 0, "batches": 0}
    by_campaign: dict[str, dict[str, int]] = defaultdict(lambda: dict(zero))
    by_unit: dict[str, dict[str, int]] = defaultdict(lambda: dict(zero))
    stops = requeued = 0
    for entry in entries:
        text = message_text(entry.get("MESSAGE"))
        if "batch email " not in text:
            continue
        match = BATCH.search(text)
        if match:
            if campaign and match["campaign"] != campaign:
                continue
            unit = entry.get("_SYSTEMD_UNIT") or "?"  # run-uN.service for edupulse-manage
            for counts in (by_campaign[match["campaign"]], by_unit[unit]):
                counts["sent"] += int(match["sent"])
                counts["failed"] += int(match["failed"])
                counts["deferred"] += int(match["pending"])
                counts["batches"] += 1
            continue
        stopped = STOPPED.search(text)
        if stopped and (not campaign or stopped["campaign"] == campaign):
            stops += 1
            continue
        again = REQUEUED.search(text)
        if again and (not campaign or campaign in (again["campaign"] or again["job"] or "")):
            requeued += 1
    totals = {key: sum(counts[key] for counts in by_campaign.values()) for key in zero}
    return {
        **totals,
        "campaigns": len(by_campaign),
        "stops": stops,
        "requeued": requeued,
        "by_campaign": dict(by_campaign),
        "by_unit": dict(by_unit),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", default="1 hour ago", help="Start of the range (journalctl syntax).")
    parser.add_argument("--until", default="", help="End of the range (journalctl syntax); empty: now.")
    parser.add_argument("--unit", action="append", metavar="PATTERN",
                        help=f"Units to read (repeatable; default {' '.join(DEFAULT_UNITS)}).")
    parser.add_argument("--campaign", help="Count only this campaign's lines.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    units = args.unit or DEFAULT_UNITS
    entries = read_journal(journal_command(args))
    if entries is None:
        entries = read_journal(journal_command(args, grep=False)) or []
    summary = summarise([entry for entry in entries if ours(entry, units)], args.campaign)
    summary = {"since": args.since, "until": args.until or "now", "units": units, **summary}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"edupulse-mail-log since={summary['since']!r} until={summary['until']!r} "
          f"units={','.join(summary['units'])}")
    print(" ".join(f"{key}={summary[key]}"
                   for key in ("sent", "failed", "deferred", "batches", "campaigns", "stops", "requeued")))
    for campaign_id, counts in summary["by_campaign"].items():
        print(f"campaign {campaign_id} " + " ".join(f"{key}={value}" for key, value in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
