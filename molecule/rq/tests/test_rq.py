"""RQ mode: hardened Redis, rqworker under systemd, nothing lost, nothing sent twice."""

from __future__ import annotations

import json

from e2e_helpers import (
    FAULT_FILE,
    MANAGE,
    assert_delivered_exactly_once,
    campaign_status,
    redis_cli,
    smtp_stalled,
    start_campaign,
    wait_for,
)

WORKER = "edupulse-rqworker@1.service"


def wait_until_sending(host, campaign_id: str, at_least: int) -> None:
    assert wait_for(lambda: campaign_status(host, campaign_id)["sent"] >= at_least, timeout=120, interval=0.5)


def test_worker_unit_is_enabled_and_running(host):
    worker = host.service(WORKER)
    assert worker.is_enabled
    assert worker.is_running


def test_worker_runs_as_the_app_user_with_the_scheduler(host):
    cmdline = host.check_output(f"systemctl show -p MainPID --value {WORKER} | xargs -I{{}} cat /proc/{{}}/cmdline | tr '\\0' ' '")
    user = host.check_output(f"systemctl show -p MainPID --value {WORKER} | xargs ps -o user= -p")
    assert "rqworker" in cmdline and "--with-scheduler" in cmdline and "email" in cmdline
    assert user.strip() == "www-data"


def test_worker_unit_exposure_is_at_most_2_5(host):
    line = host.check_output(f"systemd-analyze security {WORKER} | tail -1")
    score = float(line.split("level for")[1].split(":")[1].split()[0])
    assert score <= 2.5, line


def test_worker_stops_safely(host):
    props = host.check_output(f"systemctl show -p KillMode -p TimeoutStopUSec -p Restart {WORKER}")
    assert "KillMode=mixed" in props
    assert "Restart=on-failure" in props
    assert "TimeoutStopUSec=11min" in props  # 600 s job timeout + 60 s margin


def test_five_hundred_emails_exactly_once(host):
    assert_delivered_exactly_once(host, start_campaign(host, 500), 500)


def test_submit_returns_at_once_with_everything_pending(host):
    result = json.loads(host.check_output(
        f"{MANAGE} campaign_status {start_campaign(host, 40)} --json | tail -1"))
    assert result["mode"] == "rq"


def test_worker_killed_mid_campaign_loses_and_duplicates_nothing(host):
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    with smtp_stalled(host):  # the work-horse is now in the middle of an SMTP transaction
        host.run_test(f"systemctl kill --signal=KILL {WORKER}")
    # systemd restarts it (Restart=on-failure, RestartSec=5s).
    assert wait_for(lambda: host.service(WORKER).is_running, timeout=60)
    # The killed job comes back through edupulse-rq-maintenance.timer (heartbeat expiry ~90 s,
    # timer every minute); its claimed recipient after the 90 s claim timeout.
    assert_delivered_exactly_once(host, campaign, 300, timeout=600)


def test_redis_restart_mid_campaign_loses_nothing(host):
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    host.run_test("systemctl restart redis-server")
    assert_delivered_exactly_once(host, campaign, 300)


def test_smtp_down_for_30_seconds_mid_campaign(host):
    campaign = start_campaign(host, 200)
    wait_until_sending(host, campaign, 20)
    host.run_test(f"echo 421 > {FAULT_FILE}")
    try:
        # While the server refuses, nothing more is sent; the jobs retry later.
        wait_for(lambda: False, timeout=30)
    finally:
        host.run_test(f"rm -f {FAULT_FILE}")
    assert_delivered_exactly_once(host, campaign, 200)


def test_redis_refuses_unauthenticated_commands(host):
    assert "NOAUTH" in redis_cli(host, "GET", "x")


def test_redis_listens_on_loopback_only(host):
    listening = host.check_output("ss -Htln 'sport = :6379'")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert addresses <= {"127.0.0.1", "[::1]"}, addresses
    assert addresses


def test_app_and_worker_users_cannot_run_dangerous_commands(host):
    # The campaigns above ran without a single denial; the probes below are denials on purpose,
    # so the log is checked before them and reset after them (test_acl_log_stayed_empty).
    assert host.check_output("redis-admin-cli ACL LOG").strip() == ""
    for user in ("edupulse-app", "rq-worker"):
        assert "NOPERM" in redis_cli(host, "CONFIG", "GET", "maxmemory", user=user), user
        assert "NOPERM" in redis_cli(host, "FLUSHALL", user=user), user
    logged = host.check_output("redis-admin-cli ACL LOG").split()
    assert "flushall" in logged, logged
    host.run_test("redis-admin-cli ACL LOG RESET")


def test_redis_never_evicts_queued_jobs(host):
    assert host.check_output("redis-admin-cli CONFIG GET maxmemory-policy").split() == ["maxmemory-policy", "noeviction"]


def test_redis_files_are_private(host):
    for path in ("/etc/redis/redis.conf", "/etc/redis/users.acl"):
        item = host.file(path)
        assert item.user == "redis" and not item.mode & 0o027, (path, oct(item.mode))


def test_acl_log_stayed_empty(host):
    """No client was ever denied a command or key during the whole run (minimal ACLs suffice)."""
    assert host.check_output("redis-admin-cli ACL LOG").strip() == ""


def test_django_rq_dashboard_refuses_anonymous_users(host):
    code = host.check_output(
        "python3 -c \"import urllib.request as u, urllib.error as e\n"
        "class N(u.HTTPRedirectHandler):\n"
        "    def redirect_request(self, *a, **k): return None\n"
        "try:\n"
        "    print(u.build_opener(N).open('http://127.0.0.1:8000/django-rq/').status)\n"
        "except e.HTTPError as x:\n"
        "    print(x.code, x.headers.get('Location'))\""
    )
    status, _, location = code.partition(" ")
    assert status == "302" and "login" in location, code
