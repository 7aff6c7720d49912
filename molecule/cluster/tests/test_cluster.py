"""Multi-host celery mode: web, data (Redis with TLS, PostgreSQL) and two workers.

Each container is reached with testinfra's docker backend by name, so every test runs once
(not once per inventory host). The ground truth is the same as on one host: the SMTP sink on
the web host counts every message, and the ledger in the shared PostgreSQL says sent/pending.
The last test stops a worker container for good: keep it last.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import testinfra
from e2e_helpers import (
    MANAGE,
    assert_delivered_exactly_once,
    campaign_status,
    env_value,
    lines_showing,
    process_table_sampled,
    smtp_stalled,
    start_campaign,
    wait_for,
)

PREFIX = os.environ.get("EDUPULSE_CLUSTER_PREFIX", "cluster")
NAMES = {role: f"{PREFIX}-{role}" for role in ("web", "data", "worker1", "worker2")}
WORKERS = ("worker1", "worker2")
WORKER_UNIT = "edupulse-celery.service"
BEAT_UNIT = "edupulse-celerybeat.service"
VENV_PYTHON = "/opt/edupulse/venv/bin/python"

# Runs inside a container: try a TCP connection to each host:port; print what happened.
CONNECT = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        out[target] = "connected"
    except ConnectionRefusedError:
        out[target] = "refused"
    except OSError as error:
        out[target] = f"error: {error}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hosts() -> dict:
    return {role: testinfra.get_host(f"docker://{name}") for role, name in NAMES.items()}


@pytest.fixture(scope="module")
def address() -> dict[str, str]:
    """Each container's address on the scenario's private network (from Docker, not Ansible)."""
    out = {}
    for role, name in NAMES.items():
        out[role] = subprocess.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
            check=True, capture_output=True, text=True).stdout.strip()
    return out


def connect(host, *targets: str) -> dict[str, str]:
    return json.loads(host.check_output(f"python3 -c {shlex.quote(CONNECT)} {' '.join(targets)}"))


def unit_exists(host, unit: str) -> bool:
    return host.run(f"systemctl cat {unit}").rc == 0


def test_each_service_runs_where_the_inventory_puts_it(hosts):
    web, data = hosts["web"], hosts["data"]
    assert web.service("edupulse-gunicorn").is_running
    assert web.service("nginx").is_running
    assert not unit_exists(web, WORKER_UNIT)
    assert data.service("redis-server").is_running
    assert data.run_expect([0], "systemctl is-active 'postgresql@*-main.service'").stdout.strip() == "active"
    assert not unit_exists(data, "edupulse-gunicorn.service")
    for role in WORKERS:
        assert hosts[role].service("edupulse-celery").is_running
        assert not unit_exists(hosts[role], "edupulse-gunicorn.service"), f"{role} runs Gunicorn"
    # Beat on exactly one host (the first worker): two would send every periodic task twice.
    assert hosts["worker1"].service("edupulse-celerybeat").is_running
    assert not unit_exists(hosts["worker2"], BEAT_UNIT)


def test_workers_reach_redis_over_verified_tls_and_the_database(hosts, address):
    for role in WORKERS:
        env = hosts[role].file("/etc/edupulse/celery.env").content_string
        broker = re.search(r'BULK_EMAIL_CELERY_BROKER_URL="([^"]+)"', env).group(1)
        assert broker.startswith(f"rediss://celery-worker:") and broker.endswith(f"@{address['data']}:6380/1")
        app_env = hosts[role].file("/etc/edupulse/edupulse.env").content_string
        assert f'DJANGO_DB_HOST="{address["data"]}"' in app_env
        assert f'EMAIL_HOST="{address["web"]}"' in app_env
        # redis-py checks the certificate against the system store (the test CA is there).
        ping = hosts[role].run(
            f"{VENV_PYTHON} -c \"import redis, sys; print(redis.from_url(sys.argv[1]).ping())\" "
            f"{shlex.quote(broker)}")
        assert ping.rc == 0 and ping.stdout.strip() == "True", ping.stderr
    # With a trust store that lacks the test CA, the handshake fails: the clients do verify.
    unverified = hosts["worker1"].run(
        f"SSL_CERT_FILE=/etc/ssl/certs/ISRG_Root_X1.pem SSL_CERT_DIR=/nonexistent {VENV_PYTHON} -c "
        f"\"import redis, sys; print(redis.from_url(sys.argv[1]).ping())\" {shlex.quote(broker)}")
    assert unverified.rc != 0 and "certificate verify failed" in unverified.stderr, unverified.stderr


# Runs in a worker's venv: connects to the ledger with the app's own settings (its env file),
# some of them replaced by argv[1] (JSON); prints whether the session is encrypted, or the error.
PG_CONNECT = r"""
import json, re, sys
import psycopg
env = dict(re.findall(r'^([A-Z_]+)="(.*)"$', open("/etc/edupulse/edupulse.env").read(), re.M))
params = {"host": env["DJANGO_DB_HOST"], "port": env["DJANGO_DB_PORT"], "dbname": env["DJANGO_DB_NAME"],
          "user": env["DJANGO_DB_USER"], "password": env["DJANGO_DB_PASSWORD"],
          "sslmode": env["DJANGO_DB_SSLMODE"], "sslrootcert": env.get("DJANGO_DB_SSLROOTCERT", ""),
          "connect_timeout": 10}
params.update(json.loads(sys.argv[1]))
try:
    with psycopg.connect(**params) as connection:
        row = connection.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        print(json.dumps({"ssl": row[0]}))
except psycopg.OperationalError as error:
    print(json.dumps({"error": str(error)}))
"""


def pg_connect(host, **replace: str) -> dict:
    return json.loads(host.check_output(
        f"{VENV_PYTHON} -c {shlex.quote(PG_CONNECT)} {shlex.quote(json.dumps(replace))}"))


def test_the_app_verifies_the_database_over_tls_and_a_plain_connection_is_refused(hosts):
    """roles/postgresql with the deployment's certificate: the app connects with verify-full and
    the session is encrypted; a client whose trust store lacks the CA is refused, and so is a
    connection without TLS (pg_hba.conf admits the app's hosts with hostssl only)."""
    for role in ("web", *WORKERS):
        env = hosts[role].file("/etc/edupulse/edupulse.env").content_string
        assert 'DJANGO_DB_SSLMODE="verify-full"' in env, role
        assert 'DJANGO_DB_SSLROOTCERT="/etc/ssl/certs/ca-certificates.crt"' in env, role
        assert pg_connect(hosts[role]) == {"ssl": True}, role
    worker = hosts["worker1"]
    unverified = pg_connect(worker, sslrootcert="/etc/ssl/certs/ISRG_Root_X1.pem")
    assert "certificate verify failed" in unverified.get("error", ""), unverified
    plain = pg_connect(worker, sslmode="disable")
    assert "no pg_hba.conf entry" in plain.get("error", "") and "no encryption" in plain["error"], plain
    # The app itself (Django, its settings from the same env file) is on the encrypted session.
    shown = worker.check_output(
        f"{MANAGE} shell --verbosity 0 -c "
        + shlex.quote("from django.db import connection; c = connection.cursor(); "
                      "c.execute('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'); "
                      "print(c.fetchone()[0], connection.settings_dict['OPTIONS']['sslmode'])"))
    assert shown.strip().splitlines()[-1] == "True verify-full", shown


def test_redis_listens_on_its_private_address_and_the_plain_port_stays_local(hosts, address):
    data = hosts["data"]
    listening = data.check_output("ss -Hltn")
    assert f"{address['data']}:6380" in listening
    assert f"127.0.0.1:6379" in listening
    worker = connect(hosts["worker1"], f"{address['data']}:6380", f"{address['data']}:6379",
                     f"{address['data']}:5432")
    assert worker == {f"{address['data']}:6380": "connected", f"{address['data']}:6379": "refused",
                      f"{address['data']}:5432": "connected"}
    assert data.run_expect([0], "systemctl is-active edupulse-firewall@redis edupulse-firewall@postgresql")
    assert "edupulse_redis" in data.check_output("nft list tables")


def test_a_container_outside_the_inventory_is_refused(address):
    """A container on the same private network, in no inventory group, gets TCP resets."""
    network = subprocess.run(
        ["docker", "inspect", "-f", "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
         NAMES["data"]], check=True, capture_output=True, text=True).stdout.strip()
    image = os.environ.get("EDUPULSE_IMAGE_1", "edupulse/debian12-systemd:r3")
    targets = [f"{address['data']}:{port}" for port in (6379, 6380, 5432)]
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", network, image, "python3", "-c", CONNECT, *targets],
        check=True, capture_output=True, text=True, timeout=120)
    assert json.loads(run.stdout) == {target: "refused" for target in targets}


def test_migrations_ran_once_from_the_first_web_host(hosts, address):
    """PostgreSQL logs each schema change with its client (log_statement=ddl in vars/cluster.yml)."""
    log = hosts["data"].check_output("cat /var/log/postgresql/postgresql-*-main.log")
    creates = [line for line in log.splitlines() if 'CREATE TABLE "bulk_email_campaign"' in line]
    assert len(creates) == 1, creates
    clients = set(re.findall(r"client=(\S+)", "\n".join(
        line for line in log.splitlines() if "statement: CREATE TABLE" in line)))
    assert clients == {address["web"]}, clients
    for role in WORKERS:
        hosts[role].run_expect([0], "/usr/local/bin/edupulse-manage migrate --check")


def test_the_database_password_reaches_no_command_line_and_not_the_server_log(hosts):
    """roles/postgresql sets the app's password as a SCRAM verifier, with statement logging off.

    log_statement=ddl here logs every ALTER ROLE: the log of the whole run (the first converge
    created the user) holds neither the password nor its verifier. A re-run of the play checks
    the password by logging in with it; meanwhile no process on the database host shows it.
    """
    password = env_value(hosts["web"], "DJANGO_DB_PASSWORD")
    with process_table_sampled(hosts["data"]) as seen:
        run = run_playbook("playbooks/postgresql.yml")
    assert run.returncode == 0, run.stdout[-6000:]
    assert any(re.search(r"\bpsql\b", line) for line in seen), f"{len(seen)} command lines sampled, no psql"
    leaked = lines_showing(seen, {"the database password": password})
    assert not leaked, leaked
    log = hosts["data"].check_output("cat /var/log/postgresql/postgresql-*-main.log")
    assert password not in log
    assert "SCRAM-SHA-256$" not in log


def worker_sent(host, campaign_id: str) -> int:
    """Messages this worker host reports sent for a campaign (the "batch email" journal lines)."""
    out = host.run(f"journalctl -u {WORKER_UNIT} --no-pager -o cat | grep 'batch email campaign={campaign_id} batch='")
    return sum(int(n) for n in re.findall(r" sent=(\d+)", out.stdout))


def test_a_1000_email_campaign_goes_out_exactly_once_across_both_workers(hosts):
    web = hosts["web"]
    campaign = start_campaign(web, 1000, "Semester results")
    assert_delivered_exactly_once(web, campaign, 1000, timeout=900)
    shares = {role: worker_sent(hosts[role], campaign) for role in WORKERS}
    assert sum(shares.values()) == 1000, shares
    assert all(shares.values()), f"one worker host sent nothing: {shares}"


def unit_times(host, unit: str) -> dict[str, int]:
    """MainPID, and when the unit last entered and left the active state (monotonic and Unix s)."""
    props = "-p MainPID -p ActiveEnterTimestampMonotonic -p ActiveExitTimestampMonotonic"
    out = host.check_output(f"systemctl show {props} {unit}")
    out += "\n" + host.check_output(
        f"systemctl show --timestamp=unix -p ActiveEnterTimestamp -p ActiveExitTimestamp {unit}")
    return {key: int(value.lstrip("@") or 0) for key, value in (line.split("=", 1) for line in out.splitlines())}


def sent_times(web, campaign_id: str) -> list[float]:
    """When each delivery of a campaign was marked sent (Unix seconds, from the shared ledger)."""
    code = (
        "from bulk_email.models import Delivery\n"
        f"for t in Delivery.objects.filter(campaign_id={campaign_id!r}, sent_at__isnull=False)"
        ".values_list('sent_at', flat=True): print('sent_at', t.timestamp())\n"
    )
    out = web.check_output(f"{MANAGE} shell -c {shlex.quote(code)}")
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("sent_at ")]


def run_playbook(playbook: str, *extra: str, inventory: str = "", background: bool = False):
    """A playbook of the repo against the scenario's inventory (plus `inventory`), as converge runs.

    In the background its output goes to a file (a pipe nobody reads would fill): (process, log).
    """
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    args = [str(Path(sys.executable).with_name("ansible-playbook")), playbook,
            "-i", os.environ["MOLECULE_INVENTORY_FILE"], *(["-i", inventory] if inventory else []),
            "-e", f"@{os.environ['MOLECULE_SCENARIO_DIRECTORY']}/vars/cluster.yml"]
    for value in extra:
        args += ["-e", value]
    env = {**os.environ, "ANSIBLE_ROLES_PATH": f"{project}/roles", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    if background:
        log = Path(tempfile.mkstemp(prefix="cluster-", suffix=".log")[1])
        with log.open("w") as out:
            return subprocess.Popen(args, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT), log
    # One stream, in order: Ansible writes a failed task's message to stderr.
    return subprocess.run(args, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, timeout=1800)


def test_a_rolling_redeploy_keeps_the_queue_consumed_and_loses_nothing(hosts):
    """New settings on every app host: the workers restart one host at a time, under load.

    The campaign starts when the playbook reaches its worker play, so it is in flight while the
    workers restart; while each worker host is down (warm shutdown to ready again), the other
    one keeps sending.
    """
    web = hosts["web"]
    before = {role: unit_times(hosts[role], WORKER_UNIT) for role in WORKERS}
    marker = json.dumps({"edupulse_app_env_extra": {"EDUPULSE_DEPLOY_ID": uuid.uuid4().hex}})
    run, log = run_playbook("playbooks/app.yml", marker, background=True)
    try:
        assert wait_for(lambda: "PLAY [Run the queue workers" in log.read_text() or run.poll() is not None,
                        timeout=1200, interval=2)
        assert run.poll() is None, log.read_text()[-6000:]
        with smtp_stalled(web, 2):
            campaign = start_campaign(web, 400, "Rolling redeploy")
            assert run.wait(timeout=1800) == 0, log.read_text()[-6000:]
            assert campaign_status(web, campaign)["pending"] > 0, "campaign finished before the redeploy"
    finally:
        if run.poll() is None:
            run.kill()
    after = {role: unit_times(hosts[role], WORKER_UNIT) for role in WORKERS}
    for role in WORKERS:
        assert after[role]["MainPID"] != before[role]["MainPID"], f"{role} was not restarted"
    # One host at a time: worker1 was ready again before worker2 began to stop.
    assert after["worker1"]["ActiveEnterTimestampMonotonic"] <= after["worker2"]["ActiveExitTimestampMonotonic"], after
    assert_delivered_exactly_once(web, campaign, 400, timeout=900)
    sent = sent_times(web, campaign)
    for role in WORKERS:
        down = (after[role]["ActiveExitTimestamp"], after[role]["ActiveEnterTimestamp"] + 1)
        during = [t for t in sent if down[0] <= t <= down[1]]
        assert during, f"nothing was sent while {role} restarted ({down}): the queue stood still"


def test_rabbitmq_on_its_own_host_takes_only_the_app_hosts(hosts, address, tmp_path):
    """playbooks/rabbitmq.yml onto the data host (a 'rabbitmq' group added to the inventory).

    The broker the workers use stays Redis: this checks RabbitMQ's side of a multi-host
    deployment (private listener, firewall, per-client users from the app's hosts) without
    switching the running deployment's broker.
    """
    extra = tmp_path / "rabbitmq.yml"
    extra.write_text(f"all:\n  children:\n    rabbitmq:\n      hosts:\n        {NAMES['data']}:\n")
    data = hosts["data"]
    # The broker's users are created here: no password on a command line meanwhile.
    with process_table_sampled(data) as seen:
        run = run_playbook("playbooks/rabbitmq.yml", "celery_broker=rabbitmq", inventory=str(extra))
    assert run.returncode == 0, run.stdout[-6000:]
    assert any("add_user" in line for line in seen), f"{len(seen)} command lines sampled, no add_user"
    secrets = {name: demo_secret(name) for name in ("rabbitmq-edupulse-app", "rabbitmq-celery-worker")}
    leaked = lines_showing(seen, secrets)
    assert not leaked, leaked
    listening = data.check_output("ss -Hltn")
    assert f"{address['data']}:5672" in listening and "127.0.0.1:5672" in listening
    assert f"{address['data']}:25672" not in listening  # Erlang distribution stays on loopback
    data.run_expect([0], "systemctl is-active edupulse-firewall@rabbitmq")
    # A worker logs in with its own user over the private network (kombu, as Celery would).
    url = f"amqp://celery-worker:{demo_secret('rabbitmq-celery-worker')}@{address['data']}:5672/edupulse"
    login = hosts["worker1"].run(
        f"{VENV_PYTHON} -c \"import kombu, sys; c = kombu.Connection(sys.argv[1]); c.connect(); "
        f"print(c.connected)\" {shlex.quote(url)}")
    assert login.rc == 0 and login.stdout.strip() == "True", login.stderr
    network = subprocess.run(
        ["docker", "inspect", "-f", "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
         NAMES["data"]], check=True, capture_output=True, text=True).stdout.strip()
    image = os.environ.get("EDUPULSE_IMAGE_1", "edupulse/debian12-systemd:r3")
    outsider = subprocess.run(
        ["docker", "run", "--rm", "--network", network, image, "python3", "-c", CONNECT,
         f"{address['data']}:5672"], check=True, capture_output=True, text=True, timeout=120)
    assert json.loads(outsider.stdout) == {f"{address['data']}:5672": "refused"}


def demo_secret(name: str) -> str:
    """A credential the deployment generated on this controller, beside the scenario's inventory
    (roles/edupulse: edupulse_credentials_dir, the inventory directory's .credentials/)."""
    return (Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent / ".credentials" / name).read_text().strip()


def received_tasks(host, campaign_id: str) -> int:
    """Tasks of a campaign this worker host received (Celery's "received" journal lines)."""
    out = host.run(f"journalctl -u {WORKER_UNIT} --no-pager -o cat | grep -c 'send_batch\\[bulk_email-{campaign_id}-.*received'")
    return int(out.stdout.strip() or 0)


def test_a_worker_host_stopped_mid_campaign_loses_nothing(hosts):
    """docker kill of the whole worker host holding most of a campaign's tasks (a crash)."""
    web = hosts["web"]
    with smtp_stalled(web, 2):
        campaign = start_campaign(web, 300, "Worker host crash")
        assert wait_for(lambda: sum(received_tasks(hosts[r], campaign) for r in WORKERS) > 0, timeout=120)
        time.sleep(5)  # let both consumers fetch (countdown tasks go to whoever asks first)
        share = {role: received_tasks(hosts[role], campaign) for role in WORKERS}
        victim = max(WORKERS, key=lambda role: share[role])
        assert campaign_status(web, campaign)["pending"] > 0
        subprocess.run(["docker", "kill", NAMES[victim]], check=True, capture_output=True)
    # Its unacknowledged tasks return after the visibility timeout (150 s here), its claimed
    # recipients after the claim timeout (240 s); the other worker host sends them.
    assert_delivered_exactly_once(web, campaign, 300, timeout=900)
    survivor = next(role for role in WORKERS if role != victim)
    assert worker_sent(hosts[survivor], campaign) > 0
