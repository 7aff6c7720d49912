"""RQ mode: hardened Redis, rqworker under systemd, nothing lost, nothing sent twice."""

from __future__ import annotations

import re
import shlex
import time
import uuid

from e2e_helpers import (
    acl_log_entries,
    assert_delivered_exactly_once,
    campaign_status,
    clear_sink_fault,
    ensure_staff_user,
    fetch,
    fetch_as_staff,
    redis_cli,
    redis_run_id,
    refused_to_the_web_app,
    send_campaign,
    set_sink_fault,
    sink_counts,
    smtp_stalled,
    start_campaign,
    unit_state,
    wait_for,
    wait_until_sending,
)

WORKER = "edupulse-rqworker@1.service"
SINK = "smtp-sink.service"
STAFF_USER = "rq-dashboard-staff"
# Runs inside the container: exits 0 when the SMTP sink accepts a TCP connection.
SMTP_CONNECT = "import socket; socket.create_connection(('127.0.0.1', 2525), timeout=5).close()"



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
    props = host.check_output(f"systemctl show -p KillMode -p TimeoutStopUSec -p Restart -p RestartUSec {WORKER}")
    assert "KillMode=mixed" in props
    assert "Restart=on-failure" in props
    assert "RestartUSec=5s" in props.splitlines()
    assert "TimeoutStopUSec=11min" in props  # 600 s job timeout + 60 s margin


def test_five_hundred_emails_exactly_once(host):
    assert_delivered_exactly_once(host, start_campaign(host, 500), 500)


def test_submit_returns_at_once_with_everything_pending(host):
    # The sink holds every RCPT TO for 20 s, so the worker cannot have sent anything yet:
    # whatever the status shows as sent would have been sent by the submitting command itself.
    set_sink_fault(host, "stall 20")
    try:
        submitted = send_campaign(host, 40)
        status = campaign_status(host, submitted["id"])
    finally:
        clear_sink_fault(host)
    assert submitted["mode"] == status["mode"] == "rq", (submitted, status)
    assert (submitted["sent"], submitted["failed"], submitted["pending"]) == (0, 0, 40), submitted
    assert (status["recipients"], status["sent"], status["failed"], status["pending"]) == (40, 0, 0, 40), status
    # The two batches (40 recipients, 20 a batch) wait as rq jobs: one started, stalled at the
    # sink, the other queued; none done or failed.
    assert (status["queued"] + status["started"], status["failed_jobs"]) == (2, 0), status
    assert_delivered_exactly_once(host, submitted["id"], 40)


def test_worker_killed_mid_campaign_loses_and_duplicates_nothing(host):
    before = unit_state(host, WORKER)
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    with smtp_stalled(host):  # the work-horse is now in the middle of an SMTP transaction
        host.run_expect([0], f"systemctl kill --signal=KILL {WORKER}")
        killed_at = campaign_status(host, campaign)
    assert killed_at["pending"] > 0, killed_at  # the kill landed mid-campaign

    # systemd restarts it (Restart=on-failure, RestartSec=5s): a new main process, one more restart.
    def restarted() -> bool:
        now = unit_state(host, WORKER)
        return (int(now["NRestarts"]) > int(before["NRestarts"]) and now["MainPID"] not in ("0", before["MainPID"])
                and host.service(WORKER).is_running)

    assert wait_for(restarted, timeout=60), (before, unit_state(host, WORKER))
    # The killed job comes back through edupulse-rq-maintenance.timer (heartbeat expiry ~90 s,
    # timer every minute); its claimed recipient at once (the process is gone), else after the 240 s claim timeout.
    assert_delivered_exactly_once(host, campaign, 300, timeout=600)


def test_redis_restart_mid_campaign_loses_nothing(host):
    # A restart clears ACL LOG: check first that the campaigns so far were never denied anything.
    assert acl_log_entries(host) == []
    run_id = redis_run_id(host)
    campaign = start_campaign(host, 300)
    wait_until_sending(host, campaign, 40)
    with smtp_stalled(host):  # the campaign cannot finish before the restart
        host.run_expect([0], "systemctl restart redis-server")
        assert wait_for(lambda: host.run("redis-admin-cli PING").stdout.strip() == "PONG", timeout=60)
        restarted_at = campaign_status(host, campaign)
    assert redis_run_id(host) != run_id  # a new Redis process
    assert restarted_at["pending"] > 0, restarted_at  # pending right after the restart, so during it
    assert_delivered_exactly_once(host, campaign, 300, timeout=600)


def sink_accepts_connections(host) -> bool:
    return host.run(f"python3 -c {shlex.quote(SMTP_CONNECT)}").rc == 0


# How long the SMTP server stays down: the length is not what is tested (the sender's retries
# meet a refused connection either way), so it is short.
OUTAGE = 10


def test_smtp_down_mid_campaign(host):
    """The SMTP server is down (connection refused) for OUTAGE s; all delivered once after it returns."""
    campaign = start_campaign(host, 200)
    wait_until_sending(host, campaign, 20)
    try:
        # Stalled first, so the stop interrupts transactions in RCPT TO, before any message
        # could be stored (stopping it during DATA could store a message the sender never saw
        # accepted: the one window no sender can close).
        with smtp_stalled(host):
            host.run_expect([0], f"systemctl stop {SINK}")
        started = time.monotonic()
        delivered = sink_counts(host, campaign)["messages"]  # the Maildir stays readable
        down_at = campaign_status(host, campaign)
        assert down_at["pending"] > 0, down_at
        refused = host.run(f"python3 -c {shlex.quote(SMTP_CONNECT)}")
        assert refused.rc != 0 and "ConnectionRefusedError" in refused.stderr, refused.stderr
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))
        # Down the whole time (nothing restarted it) and nothing was delivered meanwhile.
        assert host.run(f"systemctl is-active {SINK}").stdout.strip() in ("inactive", "failed")
        assert sink_counts(host, campaign)["messages"] == delivered
        assert campaign_status(host, campaign)["pending"] > 0
    finally:
        host.run_expect([0], f"systemctl start {SINK}")
    assert wait_for(lambda: sink_accepts_connections(host), timeout=30)
    assert_delivered_exactly_once(host, campaign, 200, timeout=600)


def test_smtp_refusing_with_421_mid_campaign(host):
    """The server is up but answers 421 for 15 s: refused, nothing stored, all delivered once after."""
    campaign = start_campaign(host, 100)
    wait_until_sending(host, campaign, 20)
    since = host.check_output("date +%s").strip()
    with smtp_stalled(host):  # the campaign cannot finish before the fault
        set_sink_fault(host, "421")
        started = time.monotonic()
        delivered = sink_counts(host, campaign)["messages"]
        refusing_at = campaign_status(host, campaign)
        assert refusing_at["pending"] > 0, refusing_at
        # The sender meets the 421 (and retries with backoff): wait, bounded, for the sink to
        # have refused at least one message, then for the rest of the 15 s.
        refusals = f"journalctl -u {SINK} --since @{since} -o cat | grep -c 'smtp-sink refused' || true"
        assert wait_for(lambda: int(host.check_output(refusals) or 0) > 0, timeout=120, interval=2), \
            "the sink refused nothing while answering 421"
        time.sleep(max(0.0, 15 - (time.monotonic() - started)))
        assert sink_counts(host, campaign)["messages"] == delivered
    assert_delivered_exactly_once(host, campaign, 100, timeout=600)


def test_redis_refuses_unauthenticated_commands(host):
    assert "NOAUTH" in redis_cli(host, "GET", "x")


def test_redis_listens_on_loopback_only(host):
    listening = host.check_output("ss -Htln 'sport = :6379'")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    assert addresses <= {"127.0.0.1", "[::1]"}, addresses
    assert addresses


def test_app_and_worker_users_cannot_run_dangerous_commands_nor_the_app_a_workers(host):
    # The campaigns above (since the Redis restart, which clears the log; the test before it
    # checked the earlier ones) ran without a single denial. The probes below are denials on
    # purpose: the log must then hold exactly those, and the reset clears only them
    # (test_acl_log_stayed_empty, at the end of the file, checks everything after).
    assert acl_log_entries(host) == []
    users = ("edupulse-app", "rq-worker")
    for user in users:
        assert "NOPERM" in redis_cli(host, "CONFIG", "GET", "maxmemory", user=user), user
        assert "NOPERM" in redis_cli(host, "FLUSHALL", user=user), user
    # What only a worker does (take a job off a queue, listen for commands) is refused to the web
    # app's own connection (preset rq-web), and allowed to the worker's (rq).
    worker_only = (("BLPOP", "rq:queue:probe", "0.01"),
                   ("BLMOVE", "rq:queue:probe", "rq:queue:probe:intermediate", "LEFT", "RIGHT", "0.01"),
                   ("SUBSCRIBE", "rq:pubsub:probe"))
    refused = refused_to_the_web_app(host, "settings.RQ_QUEUES['email']['URL']", *worker_only)
    assert refused == {"BLPOP": True, "BLMOVE": True, "SUBSCRIBE": True}, refused
    assert "NOPERM" not in redis_cli(host, *worker_only[0], user="rq-worker")
    logged = acl_log_entries(host)
    probes = {(entry.get("username"), entry.get("object", "").split("|")[0]) for entry in logged}
    assert probes == {(user, command) for user in users for command in ("config", "flushall")} | {
        ("edupulse-app", "blpop"), ("edupulse-app", "blmove"), ("edupulse-app", "subscribe")}, logged
    assert len(logged) == 7 and all(entry.get("reason") == "command" for entry in logged), logged
    host.run_expect([0], "redis-admin-cli ACL LOG RESET")
    assert acl_log_entries(host) == []


def test_redis_never_evicts_queued_jobs(host):
    assert host.check_output("redis-admin-cli CONFIG GET maxmemory-policy").split() == ["maxmemory-policy", "noeviction"]


def test_redis_files_are_private(host):
    for path in ("/etc/redis/redis.conf", "/etc/redis/users.acl"):
        item = host.file(path)
        assert item.user == "redis" and not item.mode & 0o027, (path, oct(item.mode))


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
    # The same through Nginx over HTTPS.
    anonymous = fetch(host, "/django-rq/")
    assert anonymous.get("status") == 302, anonymous
    assert "/admin/login/" in anonymous["headers"]["location"][0], anonymous["headers"]


def test_django_rq_dashboard_shows_the_email_queue_to_staff(host):
    """A staff user logs in through Nginx; the dashboard reads Redis as the app's ACL user."""
    password = uuid.uuid4().hex
    ensure_staff_user(host, STAFF_USER, password)
    page = fetch_as_staff(host, "/django-rq/", STAFF_USER, password)
    summary = {key: value for key, value in page.items() if key != "body"}
    assert page["form"] == 200 and page["csrf_cookie"], summary
    assert page["login"] == 302 and page["login_location"].endswith("/django-rq/"), summary
    assert page["session_cookie"], summary
    assert page["status"] == 200, (summary, page["body"][:2000])
    assert re.search(r">\s*email\s*</a>", page["body"]), page["body"][:4000]  # the queue's row
    wrong = fetch_as_staff(host, "/django-rq/", STAFF_USER, password + "-wrong")
    assert wrong["login"] == 200 and wrong["status"] == 302, {k: v for k, v in wrong.items() if k != "body"}


def test_acl_log_stayed_empty(host):
    """Last test of the file: since the probes' reset, no client (the dashboard included) was denied."""
    assert acl_log_entries(host) == []
