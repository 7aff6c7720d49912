"""Batch mode: synchronous sending in batches, no queue infrastructure."""

from __future__ import annotations

import re

from e2e_helpers import MANAGE, last_json_line, send_campaign, sink_counts, wait_for, write_recipients

FAULT_FILE = "/run/smtp-sink/fault"


def test_no_redis_in_batch_mode(host):
    assert not host.package("redis-server").is_installed
    assert not host.socket("tcp://127.0.0.1:6379").is_listening


def test_app_is_configured_for_batch_mode(host):
    env = host.file("/etc/edupulse/edupulse.env").content_string
    assert 'BULK_EMAIL_QUEUE_MODE="batch"' in env
    assert 'BULK_EMAIL_BATCH_SIZE="20"' in env


def test_batches_are_logged_for_the_operators_grep(host):
    result = send_campaign(host, 45)
    lines = [line for line in result["stderr"].splitlines() if "batch email" in line]
    sent = [int(m.group(1)) for line in lines if (m := re.search(r"\bsent=(\d+)", line))]
    # 45 recipients at 20 per batch: 20 + 20 + 5, then a summary line with the total.
    assert sent[:3] == [20, 20, 5], lines
    assert sent[-1] == 45, lines


def test_smtp_outage_is_retried_without_loss_or_duplicates(host):
    """A 421 outage while sending: every message still arrives, and only once."""
    path = write_recipients(host, 60)
    out = "/tmp/outage.out"
    host.run_test(f"echo 421 > {FAULT_FILE}")
    try:
        host.run_test(
            f"nohup {MANAGE} send_campaign --subject Outage --body 'Retry me' "
            f"--recipients-file {path} --json > {out} 2>&1 &"
        )
        # Let the sender meet the refusing server (and log it) before the outage ends.
        assert wait_for(lambda: "421" in host.file(out).content_string, timeout=60)
    finally:
        host.run_test(f"rm -f {FAULT_FILE}")
    assert wait_for(lambda: '"sent"' in host.file(out).content_string, timeout=180)
    result = last_json_line(host.file(out).content_string)
    received = sink_counts(host, result["id"])
    assert result["sent"] == 60
    assert received["messages"] == 60
    assert received["duplicates"] == []
