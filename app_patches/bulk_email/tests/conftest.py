"""Fixtures: a real SMTP server on loopback with scripted faults, and a real Redis.

The sender's guarantees (exactly once, one connection per batch, retry on
4xx, no retry on 5xx) are about what an SMTP server sees, so the tests run
an aiosmtpd server on 127.0.0.1 and count at the server side. The rq tests
run a redis-server of their own (never the system service) on the port and
with the ACL user of BULK_EMAIL_REDIS_URL (set by the edupulse_testproject
plugin), and execute jobs with an in-process burst SimpleWorker.
"""
from __future__ import annotations

import asyncio
import email
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller


class ScriptedSmtpHandler:
    """aiosmtpd handler that records messages and answers with scripted faults.

    mail_replies / data_replies: replies given to the next MAIL FROM / DATA
        commands, one per command (e.g. ["421 ...", "421 ..."]), then normal.
    rejected: recipient -> reply to its RCPT TO (e.g. "550 5.1.1 no such user").
    drop_at_data: numbers (1-based, counted over all DATA commands) at which
        the server drops the connection instead of answering.
    data_delay: seconds the server takes before it answers each DATA (a slow
        provider's end-of-data reply, scanning or queueing the message).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[list[str], Message]] = []
        self.ehlo_count = 0
        self.rcpt_count: Counter[str] = Counter()
        self.data_count = 0
        self.attempted_message_ids: list[str] = []  # every DATA, accepted or not
        self.mail_replies: list[str] = []
        self.data_replies: list[str] = []
        self.rejected: dict[str, str] = {}
        self.drop_at_data: set[int] = set()
        self.data_delay = 0.0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        with self.lock:
            self.ehlo_count += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        with self.lock:
            if self.mail_replies:
                return self.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        with self.lock:
            self.rcpt_count[address] += 1
            if address in self.rejected:
                return self.rejected[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.data_count += 1
            number = self.data_count
            self.attempted_message_ids.append(message["Message-ID"])
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            if number in self.drop_at_data:
                server.transport.abort()
                return "421 connection dropped"  # never reaches the client
            if self.data_replies:
                return self.data_replies.pop(0)
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def received(self) -> Counter[str]:
        """How many accepted messages each recipient got."""
        with self.lock:
            return Counter(rcpt for rcpts, _ in self.messages for rcpt in rcpts)


def free_port() -> int:
    """A loopback port that is free now (aiosmtpd 1.4 cannot listen on port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server() -> Iterator[ScriptedSmtpHandler]:
    """A running loopback SMTP server; yields its handler (with .port set)."""
    handler = ScriptedSmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def smtp(settings, smtp_server: ScriptedSmtpHandler) -> ScriptedSmtpHandler:
    """Point Django's SMTP backend at the loopback server, with fast, known bulk settings."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_server.port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    settings.BULK_EMAIL_BATCH_SIZE = 20
    settings.BULK_EMAIL_BATCH_DELAY = 0.5
    settings.BULK_EMAIL_MAX_ATTEMPTS = 5
    settings.BULK_EMAIL_RETRY_BACKOFF = 2
    settings.BULK_EMAIL_RETRY_BACKOFF_MAX = 60
    settings.BULK_EMAIL_DAILY_QUOTA = 0
    settings.BULK_EMAIL_QUOTA_HOOK = "bulk_email.quota.daily_quota"
    return smtp_server


class SleepRecorder:
    """Stands in for time.sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleep() -> SleepRecorder:
    return SleepRecorder()



@pytest.fixture(autouse=True)
def batch_campaigns_by_default(settings) -> None:
    """The test project runs in rq mode (the superset); campaigns are batch unless a test asks."""
    settings.BULK_EMAIL_QUEUE_MODE = "batch"


def start_redis(url: str, directory: Path) -> subprocess.Popen:
    """Start redis-server for ``url`` (port, ACL user and password), default user disabled."""
    parts = urlsplit(url)
    # RQ's keys and channels; the celery run's broker (database 1) uses kombu's names. The
    # production ACLs of both are roles/redis presets (test_redis_acl.py and the Molecule
    # scenarios check them).
    scope = ["~rq:*", "&rq:*"] if os.environ["BULK_EMAIL_QUEUE_MODE"] == "rq" else ["~*", "&*"]
    return run_redis_server(
        parts.port, directory,
        "--user", "default", "off",
        "--user", parts.username, "on", f">{parts.password}", *scope, "+@all",
    )


def run_redis_server(port: int, directory: Path, *options: str) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:``port`` (no persistence) with ``options`` (its users),
    once it accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; the rq tests need it: apt-get install -y redis-server",
            pytrace=False,
        )
    process = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory), "--daemonize", "no", *options,
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}", pytrace=False)
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start listening within 10 s", pytrace=False)


@pytest.fixture
def spool(settings, tmp_path) -> Path:
    """BULK_EMAIL_BATCH_SPOOL_DIR, an empty directory: where batch mode pokes its sender."""
    directory = tmp_path / "batch-spool"
    directory.mkdir()
    settings.BULK_EMAIL_BATCH_SPOOL_DIR = str(directory)
    return directory


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """A private redis-server on the port of BULK_EMAIL_REDIS_URL; yields the URL."""
    url = os.environ["BULK_EMAIL_REDIS_URL"]
    process = start_redis(url, tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def rq_mode(settings, smtp, redis_server):
    """rq campaigns against the private Redis (emptied first), no waiting between attempts."""
    import django_rq

    settings.BULK_EMAIL_QUEUE_MODE = "rq"
    settings.BULK_EMAIL_BATCH_DELAY = 0
    settings.BULK_EMAIL_RETRY_BACKOFF = 0
    settings.BULK_EMAIL_RQ_RETRY_INTERVALS = [0, 0]
    queue = django_rq.get_queue("email")
    queue.connection.flushdb()
    return queue


@pytest.fixture
def celery_mode(settings, smtp, redis_server):
    """celery campaigns on the private Redis (broker database emptied first), short backoffs."""
    import redis
    from edupulse.celery import app

    settings.BULK_EMAIL_QUEUE_MODE = "celery"
    settings.BULK_EMAIL_BATCH_DELAY = 0
    settings.BULK_EMAIL_RETRY_BACKOFF = 0
    settings.BULK_EMAIL_CELERY_RETRY_BACKOFF = 1
    settings.BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX = 1
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    return app


@pytest.fixture
def celery_worker(celery_mode):
    """A real Celery worker (solo pool, in a thread) consuming the email and default queues."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_mode, pool="solo", perform_ping_check=False, queues=["email", "default"]
    ) as worker:
        yield worker


POSTGRES_ALIAS = "postgres"


def wants_postgres(items: list[pytest.Item]) -> bool:
    """True if a collected test asks for the PostgreSQL database (django_db(databases=[...]))."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker and POSTGRES_ALIAS in (marker.kwargs.get("databases") or ()):
            return True
    return False


def start_postgres(directory: Path) -> dict:
    """initdb and start a throwaway PostgreSQL cluster on a unix socket only (no TCP port).

    PostgreSQL refuses to run as root, so as root the cluster belongs to the
    ``postgres`` user the distribution package creates. Returns Django's
    settings for it; the caller stops it with ``pg_ctl stop``.
    """
    import glob

    # Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<version>/bin.
    path = os.pathsep.join([os.environ.get("PATH", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"))])
    binaries = {name: shutil.which(name, path=path) for name in ("initdb", "pg_ctl")}
    if None in binaries.values():
        pytest.fail(
            "PostgreSQL is not installed; the claim tests need it: apt-get install -y postgresql "
            "(tests/harness/prepare-host.sh)", pytrace=False,
        )
    data = directory / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "check": True}
    subprocess.run([*prefix, binaries["initdb"], "-D", str(data), "-U", "edupulse", "--auth=trust",
                    "--no-sync", "-E", "UTF8"], **quiet)
    options = f"-c listen_addresses='' -k {directory} -c fsync=off -c max_connections=50"
    subprocess.run([*prefix, binaries["pg_ctl"], "-D", str(data), "-o", options, "-w", "-t", "30",
                    "-l", str(directory / "log"), "start"], **quiet)
    return {"ENGINE": "django.db.backends.postgresql", "HOST": str(directory), "NAME": "postgres",
            "USER": "edupulse", "PASSWORD": "", "PORT": "", "PG_CTL": binaries["pg_ctl"]}


@pytest.fixture(scope="session")
def postgres_settings(request) -> Iterator[dict | None]:
    """A private PostgreSQL cluster when a collected test needs one (else None), stopped at the end."""
    if not wants_postgres(request.session.items):
        yield None
        return
    import tempfile

    # Not under pytest's tmp directory: that one is private to root, and the server runs as postgres.
    directory = Path(tempfile.mkdtemp(prefix="edupulse-pg-"))
    database = start_postgres(directory)
    pg_ctl = database.pop("PG_CTL")
    try:
        yield database
    finally:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, pg_ctl, "-D", str(directory / "data"), "-m", "fast",
                        "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False)
        shutil.rmtree(directory, ignore_errors=True)


class PostgresRouter:
    """Sends every query without an explicit ``using`` to the PostgreSQL test database."""

    def db_for_read(self, model, **hints):
        return POSTGRES_ALIAS

    def db_for_write(self, model, **hints):
        return POSTGRES_ALIAS

    def allow_relation(self, obj1, obj2, **hints):
        return True


@pytest.fixture
def on_postgres(settings):
    """Run the code under test against PostgreSQL: the router sends the ORM's queries there.

    For tests marked ``django_db(databases=["default", "postgres"], transaction=True)``.
    """
    from django.db import connections

    settings.DATABASE_ROUTERS = [PostgresRouter()]
    yield connections[POSTGRES_ALIAS]
    settings.DATABASE_ROUTERS = []


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix, tmp_path_factory, postgres_settings
) -> None:
    """The celery run's worker thread needs a test database on disk, as production has.

    Django's default SQLite test database lives in memory with a shared
    cache, whose table locks fail at once instead of waiting: a task in the
    worker thread would die with "database table is locked" while the test
    reads the ledger.
    """
    from django.conf import settings

    if settings.BULK_EMAIL_QUEUE_MODE == "celery":
        test = settings.DATABASES["default"].setdefault("TEST", {})
        test["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")
    if postgres_settings is not None:
        from django.db import connections

        settings.DATABASES[POSTGRES_ALIAS] = dict(postgres_settings)
        connections.configure_settings(settings.DATABASES)  # fill in Django's defaults in place
