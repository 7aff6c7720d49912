"""Switching queue_mode on a live server: batch -> rq -> celery -> rq -> batch, nothing lost.

Converge deployed batch mode. The tests below run in file order and walk the modes with
site.yml against this container (`-e queue_mode=NEW`, the scenario's inventory and vars/walk.yml).
At every switch a 300-email campaign of the old mode is in flight (the SMTP sink answers each
recipient slowly, so it still is when the drain starts; once the drain has counted it, the sink
answers at full speed again), and a campaign submitted while the
old mode drains is held and goes out in the new mode. On the way: a drain that times out
(fails, stops nothing), and a switch that moves the pending emails instead of waiting. At the
end every campaign of the walk was delivered exactly once and nothing of the other modes is
left: units, listening sockets, Nginx locations, env and settings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from e2e_helpers import (
    MANAGE,
    assert_delivered_exactly_once,
    campaign_status,
    clear_sink_fault,
    send_campaign,
    set_sink_fault,
    start_campaign,
    wait_for,
    wait_until_sending,
    write_recipients,
)

HOLD_FILE = "/var/lib/edupulse/queue-switch.hold"
STATE_FILE = "/etc/ansible/facts.d/edupulse.fact"
ENV_FILE = "/etc/edupulse/edupulse.env"
URLS = "/opt/edupulse/app/edupulse/urls.py"
CELERY_APP = "/opt/edupulse/app/edupulse/celery.py"
# Each recipient waits this long at the sink: 300 of them keep a mode busy for a minute or more.
STALL = "stall 0.3"
# The drain's wait task (roles/edupulse_app/tasks/switch_drain.yml): its banner follows the
# "Draining <mode> mode: N emails pending" line, so N was measured while the sink was slow.
DRAIN_WAIT = "TASK [edupulse_app : Wait until the old queue mode has sent everything it holds]"
# (campaign id, recipients, mode it was meant for): checked again at the end of the walk.
WALK: list[tuple[str, int, str]] = []

# What each mode runs, and what must not exist in the others.
UNIT_PATTERNS = {
    "rq": ["edupulse-rqworker@*", "edupulse-rq-maintenance.*"],
    "celery": ["edupulse-celery*", "edupulse-flower*"],
}
# The worker role's converge record (roles/edupulse) goes with the mode, too.
UNIT_FILES = {
    "rq": ["/etc/systemd/system/edupulse-rqworker@.service", "/etc/systemd/system/edupulse-rq-maintenance.timer",
           "/etc/edupulse/rqworker.env", "/var/lib/edupulse-converged/rqworker.json"],
    "celery": ["/etc/systemd/system/edupulse-celery.service", "/etc/systemd/system/edupulse-celerybeat.service",
               "/etc/systemd/system/edupulse-flower.service", "/etc/edupulse/celery.env",
               "/usr/local/sbin/edupulse-celery", "/var/lib/edupulse-converged/celery.json"],
}
PORTS = {"redis": "6379", "flower": "5555", "rabbitmq": "5672"}
# How roles/queue_switch names celery mode in its messages: "celery (redis broker)".
BROKER = r"(?: \((?:redis|rabbitmq) broker\))?"


# --- running site.yml against this container -------------------------------------------------
def site_command(host, mode: str, *extra: str) -> tuple[list[str], dict[str, str], str]:
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    args = [str(Path(sys.executable).with_name("ansible-playbook")), "site.yml",
            "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", host.backend.host,
            "-e", f"queue_mode={mode}", "-e", f"@{os.environ['MOLECULE_SCENARIO_DIRECTORY']}/vars/walk.yml"]
    for value in extra:
        args += ["-e", value]
    env = {**os.environ, "ANSIBLE_ROLES_PATH": f"{project}/roles", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    return args, env, project


def run_site(host, mode: str, *extra: str) -> subprocess.CompletedProcess:
    args, env, project = site_command(host, mode, *extra)
    # One stream, in order: Ansible writes a failed task's message to stderr.
    return subprocess.run(args, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, timeout=1800)


def start_site(host, mode: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """site.yml in the background; its output goes to a file (a pipe nobody reads would fill)."""
    args, env, project = site_command(host, mode, *extra)
    log = Path(tempfile.mkstemp(prefix="switch-", suffix=".log")[1])
    with log.open("w") as out:
        run = subprocess.Popen(args, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    return run, log


def flat(text: str) -> str:
    """The output with the YAML callback's line wrapping undone."""
    return " ".join(text.split())


def recap_changed(output: str, host) -> int:
    match = re.search(rf"^{re.escape(host.backend.host)}\s*:.*\bchanged=(\d+)", output, re.M)
    assert match, output[-3000:]
    return int(match.group(1))


# --- campaigns -------------------------------------------------------------------------------
def django(host, code: str) -> str:
    return host.check_output(f"{MANAGE} shell --verbosity 0 -c {shlex.quote(code)}").strip()


def start_in_flight(host, mode: str, count: int) -> str:
    """A campaign of `count` in `mode`, still sending when this returns. Batch mode sends in the
    process that submits, so that process runs in the background (a transient systemd unit, as
    an operator's shell session would be); the queued modes return at once."""
    if mode != "batch":
        campaign = start_campaign(host, count, subject=f"In flight at the switch from {mode}")
    else:
        subject = f"In flight at the switch from batch {uuid.uuid4().hex[:8]}"
        recipients = write_recipients(host, count)
        host.run_expect([0], f"systemd-run --collect --unit=edupulse-test-{uuid.uuid4().hex[:8]} {MANAGE} "
                             f"send_campaign --subject {shlex.quote(subject)} --body 'Dear student' "
                             f"--recipients-file {recipients}")
        query = f"from bulk_email.models import Campaign; print(Campaign.objects.get(subject={subject!r}).id)"
        assert wait_for(lambda: host.run(f"{MANAGE} shell --verbosity 0 -c {shlex.quote(query)}").rc == 0, 60)
        campaign = django(host, query)
    wait_until_sending(host, campaign, 5, timeout=180)
    assert campaign_status(host, campaign)["pending"] > 0
    return campaign


def mode_of(host, campaign: str) -> str:
    return campaign_status(host, campaign)["mode"]


# --- a switch --------------------------------------------------------------------------------
def switch(host, old: str, new: str, *extra: str) -> str:
    """site.yml with queue_mode=new while a 300-email campaign of `old` is in flight, and a
    campaign submitted during the switch; returns the run's flattened output."""
    set_sink_fault(host, STALL)
    try:
        in_flight = start_in_flight(host, old, 300)
        run, log = start_site(host, new, *extra)
        try:
            # The hold begins before the old mode drains: a campaign submitted now waits.
            assert wait_for(lambda: host.file(HOLD_FILE).exists or run.poll() is not None, timeout=600)
            assert host.file(HOLD_FILE).content_string.strip() == new, log.read_text()[-3000:]
            held = send_campaign(host, 30, subject=f"Submitted during the switch to {new}")
            if "queue_switch_move_pending=true" not in extra:
                # Once the drain has measured what is pending (its "Draining ..." line, then the
                # wait task), the slow sink has done its part: at full speed the rest drains in
                # seconds instead of the minute or more of the stall.
                assert wait_for(lambda: DRAIN_WAIT in log.read_text() or run.poll() is not None, timeout=600)
                clear_sink_fault(host)
        finally:
            run.wait(timeout=1800)
            output = log.read_text()
            log.unlink()
    finally:
        clear_sink_fault(host)
    assert run.returncode == 0, output[-6000:]
    assert held["held"] is True and held["mode"] == new and held["sent"] == 0, held
    WALK.append((in_flight, 300, old))
    WALK.append((held["id"], 30, new))
    assert_delivered_exactly_once(host, in_flight, 300)
    assert_delivered_exactly_once(host, held["id"], 30)
    assert mode_of(host, held["id"]) == new
    return flat(output)


def assert_runs_only(host, mode: str) -> None:
    """What a deployment of `mode` runs, and nothing of the other modes."""
    state = json.loads(host.file(STATE_FILE).content_string)
    assert state["queue_mode"] == mode, state
    assert not host.file(HOLD_FILE).exists
    for other, patterns in UNIT_PATTERNS.items():
        listed = host.check_output(f"systemctl list-units --all --plain --no-legend {' '.join(patterns)}")
        enabled = host.run(f"systemctl list-unit-files --plain --no-legend --state=enabled {' '.join(patterns)}")
        if other == mode:
            assert listed.strip(), f"no {other} unit loaded"
        else:
            assert listed.strip() == "", listed
            assert enabled.stdout.strip() == "", enabled.stdout
            for path in UNIT_FILES[other]:
                assert not host.file(path).exists, path
    listening = host.check_output("ss -Htln")
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines()}
    assert (PORTS["redis"] in ports) == (mode in ("rq", "celery")), ports
    assert (PORTS["flower"] in ports) == (mode == "celery"), ports
    assert PORTS["rabbitmq"] not in ports, ports
    assert (host.service("redis-server").is_enabled) == (mode in ("rq", "celery"))
    # In the other modes these paths answer 404 from Nginx itself ("location ^~ /django-rq {").
    nginx = host.check_output("nginx -T 2>/dev/null")
    assert ("location ^~ /django-rq/ {" in nginx) == (mode == "rq")
    assert ("location ^~ /flower/ {" in nginx) == (mode == "celery")
    env = host.file(ENV_FILE).content_string
    assert f'BULK_EMAIL_QUEUE_MODE="{mode}"' in env
    assert ("BULK_EMAIL_REDIS_URL=" in env) == (mode == "rq")
    assert ("BULK_EMAIL_CELERY_BROKER_URL=" in env) == (mode == "celery")
    # app_patches/apply.py --mode: the dashboard's URLs only in rq mode, the Celery app only in celery.
    assert ("django_rq.urls" in host.file(URLS).content_string) == (mode == "rq")
    assert host.file(CELERY_APP).exists == (mode == "celery")
    # And it sends: a fresh campaign in this mode, exactly once.
    campaign = start_campaign(host, 20, subject=f"After the switch to {mode}")
    assert mode_of(host, campaign) == mode
    assert_delivered_exactly_once(host, campaign, 20)
    WALK.append((campaign, 20, mode))


def assert_second_run_changes_nothing(host, mode: str) -> None:
    result = run_site(host, mode)
    assert result.returncode == 0, result.stdout[-6000:]
    assert recap_changed(result.stdout, host) == 0, result.stdout[-6000:]
    assert re.search(rf"Deploying {mode}{BROKER} mode \(as before\)", flat(result.stdout)), result.stdout[-3000:]


# --- the walk --------------------------------------------------------------------------------
def test_converge_deployed_batch_mode(host):
    assert_runs_only(host, "batch")


def drained_switch(host, old: str, new: str, *, second_run: bool) -> None:
    """A switch that waits for the old mode: it drained emails that were really still pending,
    then the host runs only the new mode, and (second_run) a second run changes nothing."""
    output = switch(host, old, new)
    assert re.search(rf"Switching from {old}{BROKER} to {new}{BROKER} mode", output), output[-3000:]
    drained = re.search(rf"Draining {old} mode: (\d+) emails pending", output)
    assert drained and int(drained.group(1)) > 0, output[-3000:]
    assert_runs_only(host, new)
    if second_run:
        assert_second_run_changes_nothing(host, new)


# The second run after a switch (a whole site.yml, the walk's costliest part) follows the two
# switches that leave the most of the old mode to remove: into celery from rq, and into rq from
# celery. The mode scenarios' idempotence step covers a first deployment of each mode.
def test_switch_from_batch_to_rq(host):
    drained_switch(host, "batch", "rq", second_run=False)


def test_a_drain_that_times_out_fails_and_stops_nothing(host):
    """The sink refuses everything (421): rq keeps the campaign pending and retries it, so the
    drain cannot finish; the run fails with the count, stops nothing and lifts its hold."""
    set_sink_fault(host, "421")
    try:
        stuck = start_campaign(host, 40, subject="Stuck while the sink refuses")
        result = run_site(host, "celery", "queue_switch_drain_timeout=12")
        output = flat(result.stdout)
        assert result.returncode != 0, output[-3000:]
        left = re.search(r"The rq mode did not drain within 12 s: (\d+) emails are still pending", output)
        # Every earlier campaign was delivered: exactly the stuck one is left.
        assert left and int(left.group(1)) == 40, output[-3000:]
        assert "Nothing was stopped or removed" in output and "queue_switch_move_pending=true" in output
        # Nothing changed: rq still runs, the app is still configured for it, no hold is left.
        assert host.service("edupulse-rqworker@1").is_running
        assert 'BULK_EMAIL_QUEUE_MODE="rq"' in host.file(ENV_FILE).content_string
        assert json.loads(host.file(STATE_FILE).content_string)["queue_mode"] == "rq"
        assert not host.file(HOLD_FILE).exists
        assert campaign_status(host, stuck)["pending"] == 40
    finally:
        clear_sink_fault(host)
    # rq sends them once the server answers again (the job's retries).
    assert_delivered_exactly_once(host, stuck, 40, timeout=600)
    WALK.append((stuck, 40, "rq"))
    assert_runs_only(host, "rq")


def test_switch_from_rq_to_celery(host):
    drained_switch(host, "rq", "celery", second_run=True)


def test_switch_from_celery_to_rq_moving_the_pending_emails(host):
    """queue_switch_move_pending: no wait; the celery worker stops (its running batches finish)
    and what it had not sent yet goes out in rq mode."""
    output = switch(host, "celery", "rq", "queue_switch_move_pending=true")
    moved = re.search(r"Moved: (\d+) pending email\(s\)", output)
    assert moved and int(moved.group(1)) > 0, output[-3000:]
    assert "Draining celery mode" not in output
    assert_runs_only(host, "rq")
    assert_second_run_changes_nothing(host, "rq")


def test_switch_from_rq_back_to_batch(host):
    drained_switch(host, "rq", "batch", second_run=False)


def test_every_campaign_of_the_walk_was_delivered_exactly_once(host):
    # converge's check (1), each switch's in-flight, held and after-the-switch campaigns (4 x 3),
    # the stuck campaign of the failed drain and the check after it (2).
    assert len(WALK) == 15, WALK
    for campaign, count, _mode in WALK:
        assert_delivered_exactly_once(host, campaign, count, timeout=60)
