"""edupulse-mail-log (files/edupulse_mail_log.py), run as a program against a stand-in journalctl.

The stand-in prints the journal entries a test gives it, in journalctl's JSON format, and
records its arguments, so the tests see both what the script asks journald for and what it
makes of the answer. The log lines are those bulk_email.sending writes (see its send_batch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "files" / "edupulse_mail_log.py"
A = "6f1c2d9e-0000-4000-8000-00000000000a"
B = "6f1c2d9e-0000-4000-8000-00000000000b"

# Records every call's arguments; --grep keeps the entries whose MESSAGE matches, as journalctl
# does (or fails as a journalctl built without PCRE2 when FAKE_NO_PCRE is set).
FAKE_JOURNALCTL = r"""#!/usr/bin/env python3
import json, os, sys
calls = json.load(open(os.environ["FAKE_ARGS"])) if os.path.exists(os.environ["FAKE_ARGS"]) else []
with open(os.environ["FAKE_ARGS"], "w") as file:
    json.dump(calls + [sys.argv[1:]], file)
if "--since" in sys.argv and sys.argv[sys.argv.index("--since") + 1] == "yesterday-ish":
    print('Failed to parse timestamp: yesterday-ish', file=sys.stderr)
    sys.exit(1)
entries = json.load(open(os.environ["FAKE_ENTRIES"]))
if "--grep" in sys.argv:
    if os.environ.get("FAKE_NO_PCRE"):
        print("Compiled without pattern matching support", file=sys.stderr)
        sys.exit(1)
    pattern = sys.argv[sys.argv.index("--grep") + 1]
    entries = [e for e in entries if isinstance(e.get("MESSAGE"), str) and pattern in e["MESSAGE"]
               or isinstance(e.get("MESSAGE"), list) and pattern in bytes(e["MESSAGE"]).decode()]
if not entries:
    print("-- No entries --", file=sys.stderr) if os.environ.get("FAKE_EMPTY_RC") == "0" else None
    sys.exit(int(os.environ.get("FAKE_EMPTY_RC", "0")))
for entry in entries:
    print(json.dumps(entry))
"""


def entry(message: str | list[int], unit: str = "edupulse-rqworker@1.service", tag: str = "rqworker") -> dict:
    return {"__REALTIME_TIMESTAMP": "1", "MESSAGE": message, "_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": tag}


@pytest.fixture
def journal(tmp_path):
    """Run the script with the stand-in journalctl first on PATH; returns a runner."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "journalctl"
    fake.write_text(FAKE_JOURNALCTL)
    fake.chmod(0o755)
    entries_file, args_file = tmp_path / "entries.json", tmp_path / "args.json"

    def run(entries: list[dict], *args: str, empty_rc: int = 0,
            no_pcre: bool = False) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        entries_file.write_text(json.dumps(entries))
        args_file.unlink(missing_ok=True)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_ENTRIES": str(entries_file),
               "FAKE_ARGS": str(args_file), "FAKE_EMPTY_RC": str(empty_rc), "FAKE_NO_PCRE": "1" if no_pcre else ""}
        completed = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                                   env=env, timeout=60, check=False)
        calls = json.loads(args_file.read_text()) if args_file.exists() else []
        return completed, calls

    return run


ENTRIES = [
    entry(f"INFO bulk_email batch email campaign={A} enqueued jobs=2 queue=email recipients=25"),
    entry(f"INFO bulk_email batch email campaign={A} batch=1/2 sent=18 failed=1 pending=1"),
    entry(f"[2026-03-01 08:00:01,000: INFO/ForkPoolWorker-1] batch email campaign={A} batch=2/2 sent=5 failed=0 pending=0",
          unit="edupulse-celery.service"),
    # The retry of batch 1 sends the one it deferred, and only that one.
    entry(f"INFO bulk_email batch email campaign={A} batch=1/2 sent=1 failed=0 pending=0"),
    entry("WARNING bulk_email batch email recipient=x@school.test failed: SMTPDataError: 550 no"),
    entry(f"INFO bulk_email batch email campaign={B} batch=1/1 sent=0 failed=0 pending=3", unit="edupulse-gunicorn.service"),
    # `systemd-run --unit=... edupulse-manage send_campaign` in batch mode: edupulse-manage's
    # own transient unit, tagged edupulse-manage.
    entry(f"INFO bulk_email batch email campaign={A} batch=1/1 sent=2 failed=0 pending=0", unit="run-u20.service",
          tag="edupulse-manage"),
    # Not ours: another service that happens to log the same words.
    entry(f"batch email campaign={A} batch=1/1 sent=99 failed=99 pending=0", unit="other.service", tag="other"),
    entry(f"WARNING bulk_email batch email campaign={B} stopped: SMTP server unavailable: 3 recipients in a row"),
    entry(f"INFO bulk_email batch email campaign={B} finished batches=1/1 sent=0 failed=0 pending=3 stopped: x"),
    entry(f"INFO bulk_email batch email requeued failed job=bulk_email-{B}-1-0a1b2c3d"),
    entry(list(f"INFO bulk_email batch email campaign={B} batch=1/1 sent=3 failed=0 pending=0".encode())),
    entry("INFO django.request something else entirely"),
    {"__REALTIME_TIMESTAMP": "2", "MESSAGE": None},
]


def test_sums_the_batch_lines_per_campaign_and_unit(journal):
    completed, called = journal(ENTRIES, "--since", "2 hours ago", "--until", "now", "--json")

    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert {key: summary[key] for key in ("sent", "failed", "deferred", "batches", "campaigns", "stops", "requeued")} == {
        "sent": 29, "failed": 1, "deferred": 4, "batches": 6, "campaigns": 2, "stops": 1, "requeued": 1,
    }
    assert summary["by_campaign"] == {
        A: {"sent": 26, "failed": 1, "deferred": 1, "batches": 4},
        B: {"sent": 3, "failed": 0, "deferred": 3, "batches": 2},
    }
    assert summary["by_unit"]["edupulse-celery.service"] == {"sent": 5, "failed": 0, "deferred": 0, "batches": 1}
    assert summary["by_unit"]["edupulse-gunicorn.service"]["deferred"] == 3
    assert summary["by_unit"]["run-u20.service"]["sent"] == 2
    assert "other.service" not in summary["by_unit"]
    assert (summary["since"], summary["until"], summary["units"]) == ("2 hours ago", "now", ["edupulse-*"])
    assert called == [["--no-pager", "--output=json", "--output-fields=MESSAGE,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER",
                       "--grep", "batch email", "--since", "2 hours ago", "--until", "now"]]


def test_without_pcre_it_reads_the_range_and_filters_itself(journal):
    completed, called = journal(ENTRIES, "--json", no_pcre=True)

    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["sent"] == 29
    assert [("--grep" in call) for call in called] == [True, False]


def test_text_output_and_one_campaign(journal):
    completed, _ = journal(ENTRIES, "--campaign", B, "--unit", "edupulse-gunicorn.service",
                           "--unit", "edupulse-rqworker@*")

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == ("edupulse-mail-log since='1 hour ago' until='now' "
                        "units=edupulse-gunicorn.service,edupulse-rqworker@*")
    assert lines[1] == "sent=3 failed=0 deferred=3 batches=2 campaigns=1 stops=1 requeued=1"
    assert lines[2:] == [f"campaign {B} sent=3 failed=0 deferred=3 batches=2"]


def test_units_narrow_what_is_counted(journal):
    completed, _ = journal(ENTRIES, "--unit", "edupulse-celery*", "--json")

    summary = json.loads(completed.stdout)
    # The celery worker's line, plus what edupulse-manage logged (always counted).
    assert set(summary["by_unit"]) == {"edupulse-celery.service", "run-u20.service"}
    assert (summary["sent"], summary["units"]) == (7, ["edupulse-celery*"])


@pytest.mark.parametrize("empty_rc", [0, 1])  # journalctl --grep exits 1 when nothing matched
def test_no_entries_is_zero_not_an_error(journal, empty_rc):
    completed, _ = journal([], "--json", empty_rc=empty_rc)

    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert (summary["sent"], summary["failed"], summary["campaigns"], summary["by_campaign"]) == (0, 0, 0, {})


def test_a_range_journalctl_refuses_fails_with_its_message(journal):
    completed, _ = journal(ENTRIES, "--since", "yesterday-ish")

    assert completed.returncode == 1
    assert "Failed to parse timestamp: yesterday-ish" in completed.stderr
    assert completed.stdout == ""
