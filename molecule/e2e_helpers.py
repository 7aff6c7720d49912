"""Helpers shared by the testinfra suites of every scenario.

A campaign is sent through the deployed app exactly as an operator would (`edupulse-manage
send_campaign` inside the container) to the local SMTP sink, and the sink's Maildir is the
ground truth for "delivered exactly once".
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from typing import Any, Callable

MANAGE = "/usr/local/bin/edupulse-manage"


def last_json_line(text: str) -> dict[str, Any]:
    """The operator commands print human lines first and one JSON object last."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{text}")


def write_recipients(host, count: int) -> str:
    """Write `count` new unique addresses to a file the app user can read; return its path."""
    tag = uuid.uuid4().hex[:8]
    path = f"/tmp/recipients-{tag}.txt"
    script = (
        f"open({path!r}, 'w').write(''.join("
        f"f'student{{i:05d}}.{tag}@edupulse.test\\n' for i in range({count})))"
    )
    host.run_test(f"python3 -c {shlex.quote(script)} && chmod 0644 {path}")
    return path


def send_campaign(host, count: int, subject: str = "Timetable update") -> dict[str, Any]:
    """Send a campaign to `count` new recipients; return the command's JSON plus its stderr."""
    path = write_recipients(host, count)
    cmd = host.run(
        f"{MANAGE} send_campaign --subject {shlex.quote(subject)} "
        f"--body 'Dear student, your timetable changed.' --recipients-file {path} --json"
    )
    assert cmd.rc == 0, f"send_campaign failed:\n{cmd.stdout}\n{cmd.stderr}"
    result = last_json_line(cmd.stdout)
    result["stderr"] = cmd.stderr
    return result


def sink_counts(host, campaign_id: str) -> dict[str, Any]:
    """What the SMTP sink received for one campaign."""
    out = host.check_output("smtp-sink-count")
    empty = {"messages": 0, "unique_recipients": 0, "duplicates": []}
    return json.loads(out)["by_campaign"].get(campaign_id, empty)


def campaign_status(host, campaign_id: str) -> dict[str, Any]:
    """The app's own ledger counts for a campaign."""
    return last_json_line(host.check_output(f"{MANAGE} campaign_status {campaign_id} --json"))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    """Poll until predicate() is true: a bounded wait, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def start_campaign(host, count: int, subject: str = "Exam timetable") -> str:
    """Submit a campaign (queued modes return at once) and return its id."""
    return send_campaign(host, count, subject)["id"]


def wait_until_settled(host, campaign_id: str, timeout: float = 300) -> dict[str, Any]:
    """Wait (bounded) until no delivery of the campaign is pending; return the ledger counts."""
    wait_for(lambda: campaign_status(host, campaign_id)["pending"] == 0, timeout=timeout, interval=2)
    return campaign_status(host, campaign_id)


def assert_delivered_exactly_once(host, campaign_id: str, count: int, timeout: float = 300) -> None:
    """The ledger says all sent, and the SMTP server got each recipient exactly once."""
    status = wait_until_settled(host, campaign_id, timeout)
    received = sink_counts(host, campaign_id)
    assert (status["sent"], status["failed"], status["pending"]) == (count, 0, 0), status
    assert received["duplicates"] == [], received["duplicates"][:10]
    assert received["unique_recipients"] == count
    assert received["messages"] == count
