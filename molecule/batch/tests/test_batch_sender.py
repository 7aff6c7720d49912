"""Batch mode's sender (roles/batch_sender): systemd path + timer starting a oneshot pass.

A campaign created through the app's API (what the staff page calls) returns at once; the
sender's unit sends it, every recipient exactly once at the SMTP sink. An SMTP outage leaves
deliveries pending, and the timer's next pass (batch_sender_interval=10 in this scenario)
sends them with no operator. Also here: the guide's env names, the gunicorn alias and
edupulse-manage reading root's files.
"""
from __future__ import annotations

import json
import shlex
import uuid

from e2e_helpers import (
    MANAGE,
    assert_delivered_exactly_once,
    campaign_status,
    clear_sink_fault,
    set_sink_fault,
    wait_for,
)

SPOOL = "/var/lib/edupulse/batch-spool"
ENV_FILE = "/etc/edupulse/edupulse.env"
SERVICE = "edupulse-batch-sender.service"
TRIGGERS = ("edupulse-batch-sender.path", "edupulse-batch-sender.timer")


def env_values(host) -> dict[str, str]:
    """The env file's KEY="value" lines (values without their quotes)."""
    values = {}
    for line in host.file(ENV_FILE).content_string.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip('"')
    return values


def submit_through_the_api(host, count: int, subject: str) -> str:
    """bulk_email.api.send_bulk_email, as the staff page calls it; return the campaign id."""
    tag = uuid.uuid4().hex[:8]
    code = (
        "from bulk_email.api import send_bulk_email\n"
        f"campaign = send_bulk_email({subject!r}, 'Dear student', "
        f"[f'student{{i:04d}}.{tag}@edupulse.test' for i in range({count})])\n"
        "print('campaign-id', campaign.pk)\n"
    )
    out = host.check_output(f"{MANAGE} shell -c {shlex.quote(code)}")
    return next(line.split()[1] for line in out.splitlines() if line.startswith("campaign-id "))


def sender_journal(host, since: str) -> str:
    return host.check_output(f"journalctl --no-pager -o cat -u {SERVICE} --since @{since}")


def now(host) -> str:
    return host.check_output("date +%s")


def test_the_sender_is_started_by_an_enabled_path_unit_and_timer(host):
    for unit in TRIGGERS:
        state = host.check_output(f"systemctl show -p ActiveState -p UnitFileState {unit}")
        assert "ActiveState=active" in state and "UnitFileState=enabled" in state, (unit, state)
    show = host.check_output(f"systemctl show -p Type -p User -p UnitFileState {SERVICE}")
    assert "Type=oneshot" in show and "User=www-data" in show, show
    # Not enabled itself: only the path and the timer start it.
    assert "UnitFileState=static" in show, show
    timer = host.check_output("systemctl show -p TimersMonotonic edupulse-batch-sender.timer")
    assert "OnUnitInactiveUSec=10s" in timer, timer


def test_the_spool_directory_is_the_app_users_only_and_in_the_env_file(host):
    spool = host.file(SPOOL)
    assert spool.is_directory
    assert (spool.user, spool.group, spool.mode) == ("www-data", "www-data", 0o700)
    assert env_values(host)["BULK_EMAIL_BATCH_SPOOL_DIR"] == SPOOL
    path_unit = host.file("/etc/systemd/system/edupulse-batch-sender.path").content_string
    assert f"DirectoryNotEmpty={SPOOL}" in path_unit.splitlines()


def test_a_campaign_from_the_api_is_sent_by_the_sender_exactly_once(host):
    since = now(host)
    campaign = submit_through_the_api(host, 30, "Sender pass")
    assert_delivered_exactly_once(host, campaign, 30, timeout=240)
    # The sender's unit sent it (not the process that submitted it), and emptied the spool.
    assert wait_for(lambda: f"campaign={campaign}" in sender_journal(host, since), timeout=60)
    assert host.file(SPOOL).listdir() == []


def test_an_smtp_outage_leaves_deliveries_pending_and_the_timer_sends_them(host):
    since = now(host)
    set_sink_fault(host, "421")
    try:
        campaign = submit_through_the_api(host, 12, "Outage, then the timer")
        # A pass met the refusing server and left the campaign's deliveries pending.
        assert wait_for(lambda: "pending=12" in sender_journal(host, since), timeout=240, interval=2), \
            sender_journal(host, since)
        assert campaign_status(host, campaign)["pending"] == 12
        assert host.file(SPOOL).listdir() == []  # no poke left: only the timer can start a pass
    finally:
        clear_sink_fault(host)
    assert_delivered_exactly_once(host, campaign, 12, timeout=240)


def test_the_guides_env_names_carry_the_deployments_values(host):
    env = env_values(host)
    assert env["SMTP_SERVER"] == env["EMAIL_HOST"]
    assert env["SMTP_PORT"] == env["EMAIL_PORT"]
    assert env["SMTP_USERNAME"] == env["EMAIL_HOST_USER"]
    assert env["SMTP_PASSWORD"] == env["EMAIL_HOST_PASSWORD"]
    assert env["EMAIL_USE_LOCALTIME"] == "false"
    assert not {"REDIS_HOST", "CELERY_BROKER_URL"} & set(env)


def test_the_guides_gunicorn_commands_work(host):
    assert host.run("systemctl status gunicorn --no-pager").rc == 0
    before = host.check_output("systemctl show -p MainPID edupulse-gunicorn")
    host.run_expect([0], "systemctl reload gunicorn")
    # A reload keeps the master (HUP): the same MainPID, still active.
    assert host.check_output("systemctl show -p MainPID edupulse-gunicorn") == before
    assert host.service("edupulse-gunicorn").is_running
    link = host.file("/etc/systemd/system/gunicorn.service")
    assert link.is_symlink and link.linked_to == "/etc/systemd/system/edupulse-gunicorn.service"


def test_edupulse_manage_reads_roots_files_from_roots_directory(host):
    tag = uuid.uuid4().hex[:8]
    host.run_expect([0], (
        f"cd /root && umask 077 && printf 'Dear student,\\nsee you.\\n' > body-{tag}.txt"
        f" && for i in 1 2 3 4 5; do echo student$i.{tag}@edupulse.test; done > students-{tag}.txt"
    ))
    assert host.file(f"/root/students-{tag}.txt").mode == 0o600
    done = host.run(
        f"cd /root && {MANAGE} send_campaign --subject 'From root' --body-file body-{tag}.txt "
        f"--recipients-file=students-{tag}.txt --json"
    )
    assert done.rc == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["recipients"] == 5
    assert_delivered_exactly_once(host, result["id"], 5)
    # Nothing left behind in /tmp.
    assert host.run("ls -d /tmp/edupulse-manage.* 2>/dev/null").stdout == ""


def test_edupulse_manage_fails_in_one_line_for_a_missing_file(host):
    done = host.run(f"cd /root && {MANAGE} send_campaign --subject S --body-file nope.txt --recipients-file x.txt")
    assert done.rc == 2
    assert done.stderr.strip() == "edupulse-manage: --body-file nope.txt: no such file (/root/nope.txt)"
