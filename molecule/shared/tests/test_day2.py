"""Day-2 playbooks that hold in every queue mode: status.yml and logs.yml, run for real.

Both are read-only: they must succeed with changed=0, also with --check, and refuse a bad
mode before running anything. Their numbers are checked against what the test itself did: a
small campaign delivered, one refused by the SMTP sink (550), and the app's own ledger. The
refusals of bad input, alike in every mode, are in molecule/shared/any_mode/test_day2_refusals.py
(one scenario only).
"""

from __future__ import annotations

import json
import re
import time

from day2_helpers import (
    assert_ok_and_unchanged,
    container_now,
    flat,
    run_playbook,
    submit_in_unit,
)
from e2e_helpers import (
    MANAGE,
    assert_delivered_exactly_once,
    campaign_status,
    clear_sink_fault,
    last_json_line,
    queue_mode,
    set_sink_fault,
    start_campaign,
    wait_for,
    wait_until_settled,
)

MAIL_LOG = "/usr/local/bin/edupulse-mail-log"
# Batch mode's sender (roles/batch_sender): its timer starts a pass a minute after the last one.
BATCH_SENDER_TIMER = "edupulse-batch-sender.timer"
BATCH_SENDER_SERVICE = "edupulse-batch-sender.service"


def queue_report(host) -> dict:
    return last_json_line(host.check_output(f"{MANAGE} queue_status --json"))


def uses_redis(host) -> bool:
    env = host.file("/etc/edupulse/edupulse.env").content_string
    return queue_mode(host) == "rq" or 'BULK_EMAIL_CELERY_BROKER_URL="redis' in env


def test_status_summarises_the_deployment_and_changes_nothing(host):
    campaign = start_campaign(host, 5, subject="Day-2 status")
    assert_delivered_exactly_once(host, campaign, 5)
    report = queue_report(host)
    mode = queue_mode(host)

    result = run_playbook(host, "status.yml")

    assert_ok_and_unchanged(result, host)
    out = flat(result.stdout)
    ledger = report["ledger"]
    assert f"mode: {mode}" in out and "from /etc/ansible/facts.d/edupulse.fact" in out, out[-3000:]
    assert ledger["sent"] >= 5 and ledger["last_sent_at"], ledger
    assert f"ledger: {ledger['campaigns']} campaigns, sent={ledger['sent']} failed={ledger['failed']}" in out
    assert f"last successful send: {ledger['last_sent_at']};" in out
    assert "units FAILED" not in out
    assert "edupulse-gunicorn.service=active/running" in out
    if mode in ("rq", "celery"):
        workers = re.search(r"workers alive \(units running\): (\d+) of (\d+)", out)
        assert workers and int(workers.group(1)) == int(workers.group(2)) >= 1, out[-3000:]
    if mode == "rq":
        assert "rq queue email: queued=" in out and "rq workers registered: " in out
    if mode == "celery":
        answering = re.search(r"celery workers answering: (\d+)", out)
        assert answering and int(answering.group(1)) >= 1, out[-3000:]
        assert "celery tasks (django-celery-results): started=" in out
    if uses_redis(host):
        assert "maxmemory=256.00M" in out and "policy=noeviction" in out, out[-3000:]
        assert "aof_enabled=1" in out and "rdb_last_bgsave_status=ok" in out, out[-3000:]
        assert re.search(r"last save: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", out), out[-3000:]
    else:
        assert "redis:" not in out


def test_status_works_in_check_mode(host):
    result = run_playbook(host, "status.yml", check=True)

    assert_ok_and_unchanged(result, host)
    assert f"mode: {queue_mode(host)}" in flat(result.stdout)
    assert "ledger: " in flat(result.stdout)


def mail_log(host, since: int, until: int, campaign: str) -> dict:
    out = host.check_output(f"{MAIL_LOG} --since @{since} --until @{until} --campaign {campaign} --json")
    return json.loads(out)["by_campaign"].get(campaign, {})


def test_logs_count_the_sent_and_failed_emails_of_a_time_range(host):
    # Batch mode's timer starts a sender pass a minute after the last one; one that comes while
    # send_campaign sends finds the campaign's deliveries claimed and logs them as left pending
    # (exactly once still holds: it sends none). This test counts exact log lines, so the timer
    # waits until it ends (the timer itself is tested in the batch scenario).
    timer_held = queue_mode(host) == "batch"
    if timer_held:
        host.run_expect([0], f"systemctl stop {BATCH_SENDER_TIMER}")
        # A pass the timer started just before ends on its own (it only sends what is pending).
        assert wait_for(lambda: host.run(f"systemctl is-active {BATCH_SENDER_SERVICE}").stdout.strip()
                        not in ("active", "activating"), timeout=120)
    try:
        check_the_logs_of_two_campaigns(host)
    finally:
        if timer_held:
            host.run_expect([0], f"systemctl start {BATCH_SENDER_TIMER}")


def check_the_logs_of_two_campaigns(host) -> None:
    """A refused and a delivered campaign, counted by logs.yml over a range and half of it."""
    since = container_now(host)
    set_sink_fault(host, "550")  # every message refused for good: failed, never retried
    try:
        refused = submit_in_unit(host, 3, "Day-2 logs, refused")
        status = wait_until_settled(host, refused, timeout=180)
    finally:
        clear_sink_fault(host)
    assert (status["sent"], status["failed"], status["pending"]) == (0, 3, 0), status
    # The batch line is written right after the ledger: wait for it (bounded).
    assert wait_for(lambda: mail_log(host, since, container_now(host) + 1, refused).get("failed") == 3, timeout=60)
    # journalctl's --until is a whole second: the refused campaign's lines, logged before now,
    # are all before the next second, and the next campaign's come after it.
    middle = container_now(host) + 1
    time.sleep(2)
    delivered = submit_in_unit(host, 5, "Day-2 logs, delivered")
    assert_delivered_exactly_once(host, delivered, 5)
    assert wait_for(lambda: mail_log(host, since, container_now(host) + 1, delivered).get("sent") == 5, timeout=60)
    until = container_now(host) + 1

    both = run_playbook(host, "logs.yml", f"logs_since=@{since}", f"logs_until=@{until}")
    first = run_playbook(host, "logs.yml", f"logs_since=@{since}", f"logs_until=@{middle}")

    assert_ok_and_unchanged(both, host)
    out = flat(both.stdout)
    assert f"{queue_mode(host)} mode logs to journald: " in out, out[-3000:]
    assert f"campaign {refused}: sent=0 failed=3 deferred=0" in out, out[-3000:]
    assert f"campaign {delivered}: sent=5 failed=0 deferred=0" in out, out[-3000:]
    # The range holds this test's two campaigns only (every earlier one had settled before it).
    totals = re.search(r"sent=(\d+) failed=(\d+) deferred=\d+ \(left for a retry\)", out)
    assert totals and (int(totals.group(1)), int(totals.group(2))) == (5, 3), out[-3000:]
    assert_ok_and_unchanged(first, host)
    assert f"campaign {refused}: sent=0 failed=3" in flat(first.stdout)
    assert delivered not in first.stdout  # logged after the end of the range
    # The ledger agrees with the journal.
    assert (campaign_status(host, delivered)["sent"], campaign_status(host, refused)["failed"]) == (5, 3)
