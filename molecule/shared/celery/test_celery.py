"""Celery mode: worker, beat and Flower under systemd; nothing lost, nothing twice.

Shared by the scenarios `celery` (Redis broker, Debian 12 and 13) and `celery_rabbitmq`
(RabbitMQ broker): the broker is read from the workers' env file. The broker's own checks are
in each scenario's tests/.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from e2e_helpers import (
    MANAGE,
    acl_log_entries,
    assert_delivered_exactly_once,
    campaign_status,
    fetch,
    redis_cli,
    refused_to_the_web_app,
    smtp_stalled,
    start_campaign,
    wait_for,
    wait_until_sending,
)

WORKER = "edupulse-celery.service"
BEAT = "edupulse-celerybeat.service"
FLOWER = "edupulse-flower.service"
UNITS = (WORKER, BEAT, FLOWER)
CELERY = "/usr/local/sbin/edupulse-celery"
FLOWER_ENV = "/etc/edupulse/flower.env"
CELERY_ENV = "/etc/edupulse/celery.env"
BROKER_UNITS = {"redis": "redis-server", "amqp": "rabbitmq-server"}


@pytest.fixture(scope="module")
def broker(host) -> str:
    """redis or amqp: the scheme of the workers' broker URL."""
    match = re.search(r'^BULK_EMAIL_CELERY_BROKER_URL="(redis|amqp)s?://', host.file(CELERY_ENV).content_string, re.M)
    assert match
    return match.group(1)


def django_shell(host, code: str) -> str:
    return host.check_output(f"{MANAGE} shell --verbosity 0 -c {shlex.quote(code)}").strip()


def main_pid(host, unit: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}"))



def exposure(host, unit: str) -> float:
    line = host.check_output(f"systemd-analyze security {unit} | tail -1")
    return float(line.split("level for")[1].split(":")[1].split()[0])


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_enabled_and_running(host, unit):
    service = host.service(unit)
    assert service.is_enabled
    assert service.is_running


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_is_at_most_2_5(host, unit):
    assert exposure(host, unit) <= 2.5


def test_worker_is_celery_worker_itself_as_the_app_user(host):
    pid = main_pid(host, WORKER)
    cmdline = host.check_output(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    user = host.check_output(f"ps -o user= -p {pid}").strip()
    assert " worker " in cmdline and "--queues=email,default" in cmdline, cmdline
    assert " multi " not in cmdline
    assert user == "www-data"
    props = host.check_output(f"systemctl show -p Type -p KillMode -p TimeoutStopUSec -p Restart {WORKER}")
    assert "Type=simple" in props and "KillMode=mixed" in props and "Restart=on-failure" in props
    assert "TimeoutStopUSec=2min" in props  # the scenario's 60 s task time limit + 60 s margin


def test_exactly_one_beat_runs(host):
    assert host.check_output("pgrep -u www-data -fc 'celery .*beat'").strip() == "1"


def test_celery_inspect_ping_answers(host):
    """This host's worker by name: with a destination the CLI returns at its reply, not after the timeout."""
    node = f"edupulse@{host.check_output('hostname')}"
    out = host.check_output(f"{CELERY} inspect ping --timeout 10 --destination {node}")
    assert f"{node}: OK" in out and "pong" in out, out


def test_five_hundred_emails_exactly_once(host):
    assert_delivered_exactly_once(host, start_campaign(host, 500), 500)


def test_submit_returns_at_once_as_a_celery_campaign(host):
    result = json.loads(host.check_output(f"{MANAGE} campaign_status {start_campaign(host, 40)} --json | tail -1"))
    assert result["mode"] == "celery"


def still_pending(host, campaign_id: str) -> int:
    """Pending deliveries now: a fault injected while this is 0 would test nothing."""
    pending = campaign_status(host, campaign_id)["pending"]
    assert pending > 0, f"campaign {campaign_id} finished before the fault was injected"
    return pending


def test_worker_child_killed_mid_campaign_loses_and_duplicates_nothing(host):
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    children = host.check_output(f"pgrep -P {main_pid(host, WORKER)}").split()
    assert children
    with smtp_stalled(host):  # every child is now in the middle of an SMTP transaction
        still_pending(host, campaign)
        host.run_expect([0], f"kill -9 {' '.join(children)}")
    # reject_on_worker_lost: the pool's parent sends the lost tasks back to the queue at once.
    assert_delivered_exactly_once(host, campaign, 300, timeout=600)


def test_worker_main_process_killed_mid_campaign_loses_and_duplicates_nothing(host):
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    killed = main_pid(host, WORKER)
    with smtp_stalled(host):
        still_pending(host, campaign)
        host.run_expect([0], f"kill -9 {killed}")
    # systemd restarts the unit (Restart=on-failure); the messages the killed worker held
    # unacknowledged come back: from Redis after the visibility timeout (150 s in these
    # scenarios), from RabbitMQ as soon as the dead connection closes.
    assert wait_for(lambda: main_pid(host, WORKER) not in (0, killed), timeout=300, interval=2)
    assert_delivered_exactly_once(host, campaign, 300, timeout=900)


def test_worker_restarted_mid_campaign_finishes_and_hands_back_the_rest(host):
    """`systemctl restart` (a redeploy) is Celery's warm shutdown: the running batches finish,
    the reserved unacknowledged messages go back to the broker, and a new worker sends them."""
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    before = main_pid(host, WORKER)
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    # A slow server (1 s per recipient) keeps the campaign going while the worker restarts;
    # the running batches take up to 20 s to finish, well inside TimeoutStopSec.
    with smtp_stalled(host, seconds=1):
        still_pending(host, campaign)
        host.run_expect([0], f"systemctl restart {WORKER}")
    assert main_pid(host, WORKER) not in (0, before)
    journal = host.check_output(f"journalctl -u {WORKER} --since {shlex.quote(since)} --no-pager -o cat")
    assert "Warm shutdown" in journal, journal[-2000:]
    # The stop was clean: systemd saw no failure and did not have to kill anything.
    result = host.check_output(f"systemctl show -p Result --value {WORKER}")
    assert result == "success", result
    assert_delivered_exactly_once(host, campaign, 300, timeout=600)


def test_broker_restart_mid_campaign_loses_nothing(host, broker):
    if broker == "redis":
        # A restart clears ACL LOG: the campaigns so far must have been denied nothing (the
        # later checks only see what happened after the restart).
        assert acl_log_entries(host) == []
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    with smtp_stalled(host):  # the campaign cannot finish before the broker goes down
        still_pending(host, campaign)
        host.run_expect([0], f"systemctl restart {BROKER_UNITS[broker]}")
    assert_delivered_exactly_once(host, campaign, 300, timeout=600)


def test_periodic_task_registered_in_django_celery_beat_ran(host):
    query = (
        "from django_celery_results.models import TaskResult; "
        "print(TaskResult.objects.filter(task_name='bulk_email.tasks.queue_health', status='SUCCESS').count())"
    )
    assert wait_for(lambda: int(django_shell(host, query)) > 0, timeout=120, interval=5)
    entry = django_shell(
        host,
        "from django_celery_beat.models import PeriodicTask; "
        "t = PeriodicTask.objects.get(name='bulk_email queue health'); print(t.enabled, t.total_run_count)",
    ).split()
    assert entry[0] == "True" and int(entry[1]) > 0, entry


def flower_credentials(host) -> str:
    match = re.search(r'^FLOWER_BASIC_AUTH="([^"]+)"', host.file(FLOWER_ENV).content_string, re.M)
    assert match
    return match.group(1)


def test_flower_answers_through_nginx_only_with_credentials(host):
    assert fetch(host, "/flower/")["status"] == 401
    assert fetch(host, "/flower/", auth="flower:wrong-password")["status"] == 401
    answer = fetch(host, "/flower/", auth=flower_credentials(host))
    assert answer["status"] == 200, answer["status"]
    assert "Flower" in answer["body"]


def test_flower_is_bound_to_loopback_and_asks_for_credentials_itself(host):
    listening = host.check_output("ss -Htln 'sport = :5555'")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert addresses == {"127.0.0.1"}, addresses
    code = host.check_output(
        "python3 -c \"import urllib.request as u, urllib.error as e\n"
        "try:\n"
        "    print(u.urlopen('http://127.0.0.1:5555/flower/').status)\n"
        "except e.HTTPError as x:\n"
        "    print(x.code)\""
    )
    assert code.strip() == "401"


def test_flower_env_file_is_private(host):
    env = host.file(FLOWER_ENV)
    assert (env.user, env.mode) == ("root", 0o600)


# --- The broker -----------------------------------------------------------------------------
# One test per property, with the check of the broker in use (redis: roles/redis ACL users with
# the celery preset; amqp: roles/rabbitmq). The last test of the file looks back at the whole run.


def test_broker_refuses_clients_without_credentials(host, broker):
    if broker == "redis":
        assert "NOAUTH" in redis_cli(host, "GET", "x")
    else:
        names = {user["user"] for user in json.loads(host.check_output("rabbitmqctl list_users --silent --formatter json"))}
        assert "guest" not in names and {"edupulse-app", "celery-worker"} <= names, names


def test_broker_users_are_limited_to_what_celery_needs(host, broker):
    if broker == "redis":
        # Checked before the deliberate denials below, then the log is reset (last test).
        assert acl_log_entries(host) == []
        users = ("edupulse-app", "celery-worker")
        for user in users:
            assert "NOPERM" in redis_cli(host, "CONFIG", "GET", "maxmemory", user=user), user
            assert "NOPERM" in redis_cli(host, "FLUSHALL", user=user), user
            assert "NOPERM" in redis_cli(host, "-n", "1", "GET", "rq:queue:email", user=user), user
        # The worker's subscriptions (broadcasts, events) are refused to the web app's own
        # connection (preset celery-web); what it does itself (publish, `inspect` replies) is not.
        listen = (("SUBSCRIBE", "/1.celery.pidbox"), ("PSUBSCRIBE", "/1.celeryev/worker.*"))
        refused = refused_to_the_web_app(host, "settings.CELERY_BROKER_URL", *listen)
        assert refused == {"SUBSCRIBE": True, "PSUBSCRIBE": True}, refused
        # The log holds the probes' denials, and only those: both users, each denied CONFIG and
        # FLUSHALL (the database probe adds its own entries, of these users only).
        logged = acl_log_entries(host)
        probes = {(entry.get("username"), entry.get("object", "").split("|")[0]) for entry in logged}
        assert {(user, command) for user in users for command in ("config", "flushall")} <= probes, logged
        assert {("edupulse-app", "subscribe"), ("edupulse-app", "psubscribe")} <= probes, logged
        assert {entry.get("username") for entry in logged} == set(users), logged
        host.run_expect([0], "redis-admin-cli ACL LOG RESET")
        assert acl_log_entries(host) == []
    else:
        vhosts = json.loads(host.check_output("rabbitmqctl list_vhosts --silent --formatter json"))
        assert "edupulse" in {vhost["name"] for vhost in vhosts}
        for name in ("edupulse-app", "celery-worker"):
            permissions = json.loads(
                host.check_output(f"rabbitmqctl list_user_permissions {name} --silent --formatter json")
            )
            assert [entry["vhost"] for entry in permissions] == ["edupulse"], (name, permissions)


def test_broker_listens_on_loopback_only(host, broker):
    ports = ("6379",) if broker == "redis" else ("5672", "25672", "4369")
    listening = host.check_output("ss -Htln").splitlines()
    for port in ports:
        addresses = {
            line.split()[3].rsplit(":", 1)[0] for line in listening if line.split()[3].rsplit(":", 1)[1] == port
        }
        assert addresses and addresses <= {"127.0.0.1", "[::1]"}, (port, addresses)


def test_broker_never_denied_a_client_during_the_run(host, broker):
    """Minimal rights suffice: nothing in the whole run was refused (Redis ACL LOG, RabbitMQ log)."""
    if broker == "redis":
        assert acl_log_entries(host) == []
    else:
        # grep exits 1 when it read the logs and found nothing; 2 (no log file at all, say)
        # must not pass as "nothing refused".
        logs = host.check_output("ls /var/log/rabbitmq/*.log").split()
        assert logs, "no RabbitMQ log to read"
        refused = host.run(f"grep -h -i 'access_refused\\|access refused' {' '.join(logs)}")
        assert refused.rc == 1 and refused.stdout.strip() == "", (refused.rc, refused.stdout, refused.stderr)
