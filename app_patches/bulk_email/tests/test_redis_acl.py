"""rq mode as the web app's own Redis user: every web path allowed, the worker's commands refused.

A redis-server of this module's own carries the ACL users roles/redis writes for rq mode, read
from the role itself (its presets in defaults/main.yml, the denials of vars/main.yml): the web
app as `edupulse-app` (preset rq-web) and the worker as `rq-worker` (preset rq). The web side
(the API's submit, the staff pages and their retry button, the django-rq dashboard and its
"Empty queue", `campaign_status`, `queue_status`) runs with the web user's URL, the jobs run in
a worker with the worker's, and Redis's ACL LOG, which records every refused command, key or
channel, stays empty. What only a worker does is refused to the web user.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
import redis
import yaml
from django.core.management import call_command
from django.urls import reverse
from rq import Queue, SimpleWorker

from bulk_email.api import send_bulk_email
from bulk_email.models import Campaign
from bulk_email.modes.rq import rq_queues
from bulk_email.rq_worker import Worker
from .conftest import free_port, run_redis_server

pytestmark = pytest.mark.django_db

ROLE = Path(__file__).resolve().parents[3] / "roles" / "redis"
USERS = {"web": ("edupulse-app", "rq-web"), "worker": ("rq-worker", "rq")}


def role_file(name: str) -> dict:
    return yaml.safe_load((ROLE / name).read_text())


def redis_version() -> tuple[int, ...]:
    out = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"],
                         capture_output=True, text=True, check=True).stdout
    return tuple(int(part) for part in re.search(r"v=([0-9.]+)", out).group(1).split("."))


def preset_rules(name: str) -> list[str]:
    """ACL rules of a preset as roles/redis/templates/users.acl.j2 writes them: keys, channels,
    the preset's commands after those of the preset it extends, then the role's denials."""
    defaults, variables = role_file("defaults/main.yml"), role_file("vars/main.yml")
    presets = defaults["redis_acl_presets"]
    preset = presets[name]
    base = presets.get(preset.get("extends", ""), {})
    keys = preset.get("keys", base.get("keys", []))
    channels = preset.get("channels", base.get("channels", []))
    commands = base.get("commands", []) + preset.get("commands", [])
    # What this redis-server is too old to know (vars/main.yml's __redis_acl_commands_since).
    version = redis_version()
    for command, since in variables["__redis_acl_commands_since"].items():
        if version < tuple(int(part) for part in since.split(".")):
            commands = [rule for rule in commands if rule[1:] != command]
    denied = [f"-{command}" for command in variables["__redis_acl_denied_commands"]]
    return ["resetkeys", "resetchannels", *(f"~{key}" for key in keys), *(f"&{channel}" for channel in channels),
            *commands, *denied]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A redis-server with the role's rq users (and an admin to read ACL LOG); their URLs."""
    directory = tmp_path_factory.mktemp("redis-acl")
    port = free_port()
    urls = {"admin": f"redis://admin:admin-pw@127.0.0.1:{port}/0"}
    lines = ["user default off", "user admin on >admin-pw ~* &* +@all"]
    for role, (user, preset) in USERS.items():
        lines.append(f"user {user} on >{role}-pw {' '.join(preset_rules(preset))}")
        urls[role] = f"redis://{user}:{role}-pw@127.0.0.1:{port}/0"
    (directory / "users.acl").write_text("\n".join(lines) + "\n")
    # An ACL file Redis refuses (an unknown command, say) stops the server at once.
    process = run_redis_server(port, directory, "--aclfile", str(directory / "users.acl"))
    try:
        yield urls
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def admin(acl_redis) -> redis.Redis:
    """The admin connection, with the database and ACL LOG emptied."""
    connection = redis.Redis.from_url(acl_redis["admin"])
    connection.flushdb()
    connection.acl_log_reset()
    return connection


def as_user(settings, acl_redis, role: str) -> None:
    """The app's queues on this user's URL, as its env file sets BULK_EMAIL_REDIS_URL."""
    settings.RQ_QUEUES = rq_queues(acl_redis[role])


class InProcessWorker(SimpleWorker, Worker):
    """The project's worker class (edupulse-rqworker@), running jobs in this process: a forked
    work horse would write to a copy of the test database."""


def run_worker(settings, acl_redis) -> None:
    """What edupulse-rqworker@ does, in burst, as the worker user."""
    as_user(settings, acl_redis, "worker")
    connection = redis.Redis.from_url(acl_redis["worker"])
    InProcessWorker([Queue("email", connection=connection)], connection=connection).work(burst=True)


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def assert_no_denial(admin: redis.Redis) -> None:
    denied = [{key: entry[key] for key in ("reason", "object", "username")} for entry in admin.acl_log()]
    assert denied == [], denied


def test_every_web_path_runs_as_the_web_user_without_a_denial(
    settings, smtp, acl_redis, admin, client, django_user_model, django_capture_on_commit_callbacks
):
    settings.BULK_EMAIL_QUEUE_MODE = "rq"
    settings.BULK_EMAIL_BATCH_DELAY = 0
    settings.BULK_EMAIL_RETRY_BACKOFF = 0
    settings.BULK_EMAIL_RQ_RETRY_INTERVALS = [0, 0]
    smtp.rejected["student003@school.test"] = "550 5.1.1 no such user"
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    recipients = [f"student{i:03d}@school.test" for i in range(1, 46)]

    as_user(settings, acl_redis, "web")
    with django_capture_on_commit_callbacks(execute=True):
        campaign = send_bulk_email("Timetable", "Body", recipients)
    pages = [reverse("bulk_email:campaign-list"), reverse("bulk_email:campaign-detail", args=[campaign.id]),
             reverse("bulk_email:campaign-status", args=[campaign.id]), "/django-rq/"]
    # django-rq numbers the queues in the order of their names.
    email = sorted(settings.RQ_QUEUES).index("email")
    dashboard = [reverse(f"django_rq:{page}", args=[email]) for page in
                 ("jobs", "queue_details", "finished_jobs", "failed_jobs", "scheduled_jobs", "started_jobs",
                  "deferred_jobs", "workers")]

    def browse() -> None:
        for page in pages + dashboard:
            assert client.get(page).status_code == 200, page
        assert json.loads(command("campaign_status", str(campaign.id), "--json").splitlines()[-1])["id"]
        command("queue_status", "--json")

    browse()
    assert Campaign.objects.get(pk=campaign.pk).counts()["pending"] == 45
    run_worker(settings, acl_redis)
    as_user(settings, acl_redis, "web")
    browse()
    assert Campaign.objects.get(pk=campaign.pk).counts() == {"pending": 0, "sent": 44, "failed": 1}

    # The retry button, then the worker sends the one that had failed.
    del smtp.rejected["student003@school.test"]
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(reverse("bulk_email:campaign-retry", args=[campaign.id])).status_code == 302
    run_worker(settings, acl_redis)
    assert smtp.received()["student003@school.test"] == 1

    # The dashboard's "Empty queue" (a Lua script: LPOP and DEL inside it are checked too).
    as_user(settings, acl_redis, "web")
    Queue("default", connection=redis.Redis.from_url(acl_redis["web"])).enqueue("builtins.print", "x")
    default = sorted(settings.RQ_QUEUES).index("default")
    assert client.post(reverse("django_rq:clear", args=[default]), {"post": "yes"}).status_code in (200, 302)
    assert Queue("default", connection=admin).count == 0
    browse()

    assert_no_denial(admin)


@pytest.mark.parametrize("blocked", [
    ("BLPOP", "rq:queue:email", "0.01"),
    ("BLMOVE", "rq:queue:email", "rq:queue:email:intermediate", "LEFT", "RIGHT", "0.01"),
    ("LMOVE", "rq:queue:email", "rq:queue:email:intermediate", "LEFT", "RIGHT"),
    ("SUBSCRIBE", "rq:pubsub:worker"),
], ids=lambda args: args[0])
def test_what_only_a_worker_does_is_refused_to_the_web_user(acl_redis, admin, blocked):
    web = redis.Redis.from_url(acl_redis["web"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        web.execute_command(*blocked)
    # The worker's user may: its preset is the one the web user's extends.
    worker = redis.Redis.from_url(acl_redis["worker"])
    if blocked[0] == "SUBSCRIBE":
        pubsub = worker.pubsub()
        pubsub.subscribe(blocked[1])
        assert pubsub.get_message(timeout=1)["type"] == "subscribe"
        pubsub.close()
    else:
        worker.execute_command(*blocked)
    assert [entry["username"] for entry in admin.acl_log()] == ["edupulse-app"]
