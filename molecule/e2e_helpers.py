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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

MANAGE = "/usr/local/bin/edupulse-manage"
FAULT_FILE = "/run/smtp-sink/fault"


def redis_cli(host, *args: str, user: str = "") -> str:
    """redis-cli as an ACL user whose password is read from the deployed env files."""
    auth = ""
    if user:
        auth = f"REDISCLI_AUTH=\"$(sed -n 's|.*{user}:\\([^@]*\\)@.*|\\1|p' /etc/edupulse/*.env | head -1)\" "
    cmd = host.run(f"{auth}redis-cli --no-auth-warning {'--user ' + user if user else ''} {' '.join(args)}")
    return (cmd.stdout + cmd.stderr).strip()


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


@contextmanager
def smtp_stalled(host, seconds: int = 3) -> Iterator[None]:
    """While inside, the sink waits `seconds` before answering each RCPT TO.

    For killing workers mid-send: after a moment every sender is waiting on
    the server, so a kill interrupts a transaction the server cannot have
    accepted. A kill that lands between the server's 250 and the ledger's
    commit would make the message go out twice (the one window no SMTP
    sender can close; README, "Nothing lost"); at random times that window
    is hit often with a local sink, so a test that killed at random would
    test luck rather than recovery.
    """
    host.run_test(f"echo 'stall {seconds}' > {FAULT_FILE}")
    try:
        time.sleep(seconds / 2)
        yield
    finally:
        host.run_test(f"rm -f {FAULT_FILE}")


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


# Runs inside the container: one request, no redirects followed, the answer as JSON.
FETCH = r"""
import base64, json, ssl, sys, urllib.error, urllib.request
url, auth, tls = sys.argv[1], sys.argv[2], sys.argv[3]
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if tls != "any":
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, tls)
opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
request = urllib.request.Request(url)
if auth:
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    response = opener.open(request, timeout=30)
except urllib.error.HTTPError as error:
    response = error
except (urllib.error.URLError, ssl.SSLError, ConnectionError) as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
headers = {}
for name, value in response.headers.items():
    headers.setdefault(name.lower(), []).append(value)
body = response.read(4096).decode("utf-8", "replace")
print(json.dumps({"status": response.status, "headers": headers, "body": body}))
"""


def fetch(host, path: str, scheme: str = "https", auth: str = "", tls: str = "any") -> dict:
    """GET scheme://127.0.0.1<path> inside the container."""
    url = f"{scheme}://127.0.0.1{path}"
    out = host.check_output(
        f"python3 -c {shlex.quote(FETCH)} {shlex.quote(url)} {shlex.quote(auth)} {shlex.quote(tls)}"
    )
    return json.loads(out)
