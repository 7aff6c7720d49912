"""The macOS development playbook, run for real in a Linux container with a brew test double.

converge.yml ran playbooks/dev_macos.yml three times as the non-root user `developer`:
  arm-rq      - architecture arm64 (Homebrew in /opt/homebrew), rq mode, console mail backend,
                a git checkout;
  arm-celery  - the same Homebrew (and its Redis), celery mode, console mail backend;
  intel-batch - the container's own x86_64 facts (Homebrew in /usr/local), batch mode, the SMTP
                sink, launchd agents.
The double (tests/dev_macos/brew) logs every call to <prefix>/var/brew-double/calls.jsonl and
starts Debian's real redis-server for `brew services start redis`.

The playbook runs that must fail (no Homebrew, root, not macOS, a bad queue mode) run here, from
the controller, with the same inventory Molecule uses.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest

DEVELOPER = "developer"
HOME = f"/home/{DEVELOPER}"
ARM = {"prefix": "/opt/homebrew", "project": f"{HOME}/src/arm-rq", "mode": "rq"}
CELERY = {"prefix": "/opt/homebrew", "project": f"{HOME}/src/arm-celery", "mode": "celery"}
INTEL = {"prefix": "/usr/local", "project": f"{HOME}/src/intel-batch", "mode": "batch"}
# By Homebrew prefix, and by working copy.
CASES = {"arm64": ARM, "x86_64": INTEL}
PROJECTS = {"arm-rq": ARM, "arm-celery": CELERY, "intel-batch": INTEL}
UNTOUCHED = f"{HOME}/src/no-brew"
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
INSECURE_KEY = "insecure-development-key-do-not-use-in-production"


# --- helpers ---------------------------------------------------------------------------------
def as_developer(host, command: str):
    """Run a shell command as the developer, in their home, as a login would."""
    return host.run(f"runuser -u {DEVELOPER} -- sh -c {shlex.quote(f'cd {HOME} && {command}')}")


def runner(case: dict) -> str:
    return f"{case['project']}/.venv/bin/edupulse-env"


def brew_calls(host, prefix: str) -> list[dict]:
    log = host.file(f"{prefix}/var/brew-double/calls.jsonl")
    return [json.loads(line) for line in log.content_string.splitlines()] if log.exists else []


def env_file(host, case: dict) -> dict[str, str]:
    """The dev .env parsed the way the env runner reads it (a shell sources it)."""
    out = as_developer(host, f"set -a && . {case['project']}/.env && env -0")
    raw = host.file(f"{case['project']}/.env").content_string
    names = [line.split("=", 1)[0] for line in raw.splitlines() if line and not line.startswith("#")]
    values = dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
    return {name: values[name] for name in names}


def pip_freeze(host, case: dict) -> list[str]:
    """The virtualenv's `pip freeze`, names normalised as PEP 503 does (django_celery_results and
    django-celery-results are one project; pip prints each as its metadata spells it)."""
    out = as_developer(host, f"{case['project']}/.venv/bin/pip freeze").stdout.lower().splitlines()
    return [re.sub(r"^[-_.a-z0-9]+", lambda name: re.sub(r"[-_.]+", "-", name.group(0)), line) for line in out]


def python_formula(host) -> str:
    """The container's own Python, which the double links as Homebrew's (converge does the same)."""
    return "python@" + host.check_output("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")


def dev_playbook(host, *extra: str, user: str = DEVELOPER, rc: int = 2) -> str:
    """Run playbooks/dev_macos.yml against the container as `user`, as converge does, expecting
    exit code `rc` (2: a task failed). Returns its output with the YAML callback's line wrapping
    undone."""
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(PROJECT_DIR / "roles"),
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_NOCOLOR": "1",
    }
    command = [
        "ansible-playbook", "-i", inventory, str(PROJECT_DIR / "playbooks/dev_macos.yml"),
        "-e", "dev_macos_hosts=all", "-e", f"ansible_user={user}",
        "-e", f"dev_macos_app_patches_dir={HOME}/edupulse-queue/app_patches",
        "-e", f"dev_macos_python_formula={python_formula(host)}", *extra,
    ]
    run = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == rc, run.stdout + run.stderr
    return " ".join((run.stdout + run.stderr).split())


def untouched(host) -> None:
    """The failed runs changed nothing: no env file, no virtualenv, no patched settings."""
    assert not host.file(f"{UNTOUCHED}/.env").exists
    assert not host.file(f"{UNTOUCHED}/.venv").exists
    assert not host.file(f"{UNTOUCHED}/bulk_email").exists
    assert "edupulse-queue" not in host.file(f"{UNTOUCHED}/edupulse/settings.py").content_string


# --- Homebrew, called by its full path, never as root ------------------------------------------
@pytest.mark.parametrize("arch", CASES)
def test_brew_is_called_by_full_path_at_the_architectures_prefix(host, arch):
    calls = brew_calls(host, CASES[arch]["prefix"])
    assert calls, f"brew at {CASES[arch]['prefix']} was never called"
    assert {c["argv0"] for c in calls} == {f"{CASES[arch]['prefix']}/bin/brew"}


def test_brew_never_runs_as_root(host):
    uid = host.user(DEVELOPER).uid
    assert uid != 0
    for case in CASES.values():
        calls = brew_calls(host, case["prefix"])
        assert {(c["uid"], c["user"]) for c in calls} == {(uid, DEVELOPER)}, calls


def test_arm64_installs_python_and_redis_once_and_starts_redis_once(host):
    calls = [c["argv"] for c in brew_calls(host, ARM["prefix"])]
    # One install of both (community.general.homebrew passes the missing ones in any order).
    installs = [sorted(c[1:]) for c in calls if c[0] == "install" and c != ["install", "rabbitmq"]]
    assert installs == [sorted([python_formula(host), "redis"])], calls
    assert calls.count(["services", "start", "redis"]) == 1, calls
    # Each was looked at first, as every later run (idempotence) only looks.
    first_install = next(i for i, c in enumerate(calls) if c[0] == "install")
    assert calls.index(["info", "--json=v2", python_formula(host), "redis"]) < first_install
    assert calls.index(["services", "info", "redis", "--json"]) < calls.index(["services", "start", "redis"])
    assert not [c for c in calls if c[0] in ("update", "upgrade", "uninstall", "reinstall")]


def test_install_runs_without_homebrews_auto_update(host):
    installs = [c for c in brew_calls(host, ARM["prefix"]) if c["argv"][0] == "install"]
    assert installs and all(c["no_auto_update"] for c in installs)


def test_x86_64_batch_installs_only_python_and_starts_no_service(host):
    calls = [c["argv"] for c in brew_calls(host, INTEL["prefix"])]
    assert calls.count(["install", python_formula(host)]) == 1, calls
    assert not [c for c in calls if c[0] == "services"], calls
    assert not host.file(f"{INTEL['prefix']}/opt/redis").exists


# --- the broker -------------------------------------------------------------------------------
def test_homebrews_redis_answers_ping(host):
    assert as_developer(host, f"{ARM['prefix']}/bin/redis-cli ping").stdout.strip() == "PONG"


def test_redis_is_the_one_brew_services_started(host):
    """Debian's own service is masked: the PONG comes from the redis brew started, as the developer."""
    assert not host.service("redis-server").is_running
    pid = host.file(f"{ARM['prefix']}/var/brew-double/services/redis.pid").content_string.strip()
    owner = host.check_output(f"stat -c %U /proc/{pid}")
    cmdline = host.file(f"/proc/{pid}/cmdline").content_string
    assert owner == DEVELOPER
    assert "redis-server" in cmdline and "127.0.0.1:6379" in cmdline


# --- the virtualenv ---------------------------------------------------------------------------
@pytest.mark.parametrize("project", PROJECTS)
def test_virtualenv_is_built_with_homebrews_python(host, project):
    case = PROJECTS[project]
    cfg = host.file(f"{case['project']}/.venv/pyvenv.cfg").content_string
    assert f"home = {case['prefix']}/opt/{python_formula(host)}/bin" in cfg.splitlines()
    assert host.file(f"{case['project']}/.venv").user == DEVELOPER


def test_rq_virtualenv_has_the_apps_and_the_modes_packages(host):
    freeze = pip_freeze(host, ARM)
    for pin in ("django==5.2.19", "django-rq==4.2.0", "rq==2.12.0", "redis==8.1.0", "gunicorn==27.0.1"):
        assert pin in freeze, freeze


def test_batch_virtualenv_has_no_queue_packages_but_the_sink(host):
    freeze = "\n" + "\n".join(pip_freeze(host, INTEL))
    assert "django==5.2.19" in freeze
    assert "django-rq" not in freeze and "\nrq==" not in freeze
    assert "aiosmtpd==" in freeze


# --- the dev .env -----------------------------------------------------------------------------
@pytest.mark.parametrize("project", PROJECTS)
def test_env_file_is_private_to_the_developer(host, project):
    env = host.file(f"{PROJECTS[project]['project']}/.env")
    assert (env.user, env.group, env.mode) == (DEVELOPER, DEVELOPER, 0o600)


@pytest.mark.parametrize("project", PROJECTS)
def test_env_file_has_a_generated_key_and_no_mail_password(host, project):
    env = env_file(host, PROJECTS[project])
    assert len(env["DJANGO_SECRET_KEY"]) == 50 and env["DJANGO_SECRET_KEY"] != INSECURE_KEY
    assert "EMAIL_HOST_PASSWORD" not in env and "EMAIL_HOST_USER" not in env
    assert env["DJANGO_DEBUG"] == "true"
    assert env["BULK_EMAIL_QUEUE_MODE"] == PROJECTS[project]["mode"]


def test_each_working_copy_has_its_own_key(host):
    keys = {env_file(host, case)["DJANGO_SECRET_KEY"] for case in PROJECTS.values()}
    assert len(keys) == len(PROJECTS)


def test_console_backend_and_brews_redis_in_rq_mode(host):
    env = env_file(host, ARM)
    assert env["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    assert env["BULK_EMAIL_REDIS_URL"] == "redis://127.0.0.1:6379/0"


def test_celery_mode_uses_redis_database_1_as_its_broker(host):
    env = env_file(host, CELERY)
    assert env["BULK_EMAIL_CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/1"
    assert env["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"


def test_celery_virtualenv_has_celery_beat_results_and_flower(host):
    freeze = pip_freeze(host, CELERY)
    for pin in ("celery==5.7.0", "django-celery-beat==2.9.0", "django-celery-results==2.6.0", "flower==2.2.0"):
        assert pin in freeze, freeze
    assert not [line for line in freeze if line.startswith("django-rq")]


def test_smtp_sink_backend_in_the_sink_case(host):
    env = env_file(host, INTEL)
    assert env["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (env["EMAIL_HOST"], env["EMAIL_PORT"], env["EMAIL_USE_TLS"]) == ("127.0.0.1", "1025", "false")
    assert "BULK_EMAIL_REDIS_URL" not in env


def test_env_file_and_virtualenv_are_kept_out_of_git(host):
    status = as_developer(host, f"git -C {ARM['project']} status --porcelain --untracked-files=all")
    assert status.rc == 0
    paths = [line[3:] for line in status.stdout.splitlines()]
    assert ".env" not in paths and not [p for p in paths if p.startswith(".venv/")], paths
    # What app_patches changed is visible, as it should be in a working copy.
    assert "edupulse/settings.py" in paths
    exclude = host.file(f"{ARM['project']}/.git/info/exclude").content_string.splitlines()
    assert exclude.count("/.env") == 1 and exclude.count("/.venv/") == 1


# --- app_patches and migrations ---------------------------------------------------------------
@pytest.mark.parametrize("project", PROJECTS)
def test_app_patches_are_applied_to_the_working_copy_once(host, project):
    case = PROJECTS[project]
    settings = host.file(f"{case['project']}/edupulse/settings.py").content_string
    urls = host.file(f"{case['project']}/edupulse/urls.py").content_string
    assert settings.count(">>> edupulse-queue") == 1
    assert urls.count(">>> edupulse-queue") == 1
    assert ("django_rq.urls" in urls) == (case["mode"] == "rq")
    assert host.file(f"{case['project']}/bulk_email/sending.py").exists
    assert host.file(f"{case['project']}/edupulse/celery.py").exists == (case["mode"] == "celery")
    # The staff page sends through the queue under runserver too (the example app's patch).
    views = host.file(f"{case['project']}/core/views.py").content_string
    assert "from bulk_email.api import" in views and "from .mail import send_bulk_email" not in views, views[:2000]
    assert host.file(f"{case['project']}/.edupulse-patches").is_directory


@pytest.mark.parametrize("project", PROJECTS)
def test_migrations_are_applied(host, project):
    case = PROJECTS[project]
    check = as_developer(host, f"{runner(case)} python manage.py migrate --check --noinput")
    assert check.rc == 0, check.stdout + check.stderr
    plan = as_developer(host, f"{runner(case)} python manage.py showmigrations").stdout
    assert "[X] 0001_initial" in plan and "[ ]" not in plan
    assert "bulk_email" in plan and ("django_celery_results" in plan) == (case["mode"] == "celery")


# --- the printed commands work ----------------------------------------------------------------
def send(host, case: dict, count: int) -> dict:
    tag = uuid.uuid4().hex[:8]
    recipients = f"/tmp/dev-{tag}.txt"
    as_developer(host, f"seq -f 'student%g.{tag}@edupulse.test' {count} > {recipients}")
    out = as_developer(
        host,
        f"{runner(case)} python manage.py send_campaign --subject 'Dev {tag}' --body 'Hello' "
        f"--recipients-file {recipients} --json",
    )
    assert out.rc == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def status(host, case: dict, campaign: str) -> dict:
    out = as_developer(host, f"{runner(case)} python manage.py campaign_status {campaign} --json")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_rq_mode_sends_through_brews_redis_and_the_printed_worker_command(host):
    campaign = send(host, ARM, 7)["id"]
    # The printed command, in burst mode so that it returns when the queue is empty.
    worker = as_developer(host, f"{runner(ARM)} python manage.py rqworker --burst email")
    assert worker.rc == 0, worker.stdout + worker.stderr
    assert worker.stdout.count("Subject: Dev ") == 7  # the console backend printed each message
    assert status(host, ARM, campaign)["sent"] == 7


def background(host, case: dict, command: str) -> str:
    """Start a printed command in the background as the developer; return its log file
    (its pid in LOG.pid: the runner exec's the command, so that is the command's own)."""
    log = f"/tmp/dev-{uuid.uuid4().hex[:8]}.log"
    as_developer(host, f"nohup {runner(case)} {command} > {log} 2>&1 & echo $! > {log}.pid")
    return log


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(1)


def test_celery_mode_sends_through_brews_redis_and_the_printed_worker_command(host):
    campaign = send(host, CELERY, 6)["id"]
    log = background(host, CELERY, "celery -A edupulse worker -Q email,default -l info")
    try:
        wait_for(lambda: status(host, CELERY, campaign)["sent"] == 6, 120, "campaign not sent by the worker")
    finally:
        host.run(f"kill $(cat {log}.pid)")
    assert status(host, CELERY, campaign)["failed"] == 0
    # The console backend in the worker printed each message once.
    wait_for(lambda: host.file(log).content_string.count("Subject: Dev ") >= 6, 10, host.file(log).content_string)
    assert host.file(log).content_string.count("Subject: Dev ") == 6


def test_batch_mode_sends_to_the_printed_smtp_sink(host):
    log = background(host, INTEL, "python -u -m aiosmtpd -n -l 127.0.0.1:1025")
    try:
        wait_for(lambda: host.socket("tcp://127.0.0.1:1025").is_listening, 30, "the sink does not listen")
        result = send(host, INTEL, 5)
        assert (result["sent"], result["failed"], result["pending"]) == (5, 0, 0)
        assert host.file(log).content_string.count("Subject: Dev ") == 5
    finally:
        host.run(f"kill $(cat {log}.pid)")


def test_batch_mode_has_a_private_spool_directory_in_its_env_file(host):
    spool = host.file(f"{INTEL['project']}/.batch-spool")
    assert spool.is_directory and (spool.user, spool.mode) == (DEVELOPER, 0o700)
    assert env_file(host, INTEL)["BULK_EMAIL_BATCH_SPOOL_DIR"] == f"{INTEL['project']}/.batch-spool"
    for case in (ARM, CELERY):
        assert "BULK_EMAIL_BATCH_SPOOL_DIR" not in env_file(host, case)


def test_batch_mode_the_printed_sender_sends_what_the_api_dispatched(host):
    """send_bulk_email (the staff page's call) only pokes; the printed `batch_sender --watch` sends."""
    sink = background(host, INTEL, "python -u -m aiosmtpd -n -l 127.0.0.1:1025")
    sender = background(host, INTEL, "python manage.py batch_sender --watch")
    try:
        wait_for(lambda: host.socket("tcp://127.0.0.1:1025").is_listening, 30, "the sink does not listen")
        tag = uuid.uuid4().hex[:8]
        code = (
            "from bulk_email.api import send_bulk_email; "
            f"print('campaign-id', send_bulk_email('Dev {tag}', 'Hello', "
            f"[f'student{{i}}.{tag}@edupulse.test' for i in range(4)]).pk)"
        )
        out = as_developer(host, f"{runner(INTEL)} python manage.py shell -c {shlex.quote(code)}")
        assert out.rc == 0, out.stdout + out.stderr
        campaign = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("campaign-id "))
        wait_for(lambda: status(host, INTEL, campaign)["sent"] == 4, 120, host.file(sender).content_string)
        wait_for(lambda: host.file(sink).content_string.count(f"Subject: Dev {tag}") >= 4, 10, "sink")
        assert host.file(sink).content_string.count(f"Subject: Dev {tag}") == 4
    finally:
        host.run(f"kill $(cat {sender}.pid) $(cat {sink}.pid)")


def test_batch_spool_directory_is_kept_out_of_git_only_in_batch_mode(host):
    exclude = host.file(f"{ARM['project']}/.git/info/exclude").content_string.splitlines()
    assert "/.batch-spool/" not in exclude


# --- launchd agents ----------------------------------------------------------------------------
def test_launchd_agents_run_the_printed_commands(host):
    agents = f"{HOME}/Library/LaunchAgents"
    names = sorted(host.file(agents).listdir())
    assert names == ["org.edupulse.dev.batch-sender.plist", "org.edupulse.dev.smtp-sink.plist", "org.edupulse.dev.web.plist"]
    web = plistlib.loads(host.file(f"{agents}/org.edupulse.dev.web.plist").content)
    assert web["Label"] == "org.edupulse.dev.web"
    assert web["ProgramArguments"] == [runner(INTEL), "python", "manage.py", "runserver", "127.0.0.1:8000"]
    assert web["WorkingDirectory"] == INTEL["project"]
    sink = plistlib.loads(host.file(f"{agents}/org.edupulse.dev.smtp-sink.plist").content)
    assert sink["ProgramArguments"][1:] == ["python", "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:1025"]
    sender = plistlib.loads(host.file(f"{agents}/org.edupulse.dev.batch-sender.plist").content)
    assert sender["ProgramArguments"] == [runner(INTEL), "python", "manage.py", "batch_sender", "--watch"]


# --- runs that must fail before changing anything --------------------------------------------
@pytest.mark.parametrize("arch", CASES)
def test_missing_homebrew_fails_with_the_install_command(host, arch):
    prefix = CASES[arch]["prefix"]
    host.run_test(f"mv {prefix}/bin/brew {prefix}/bin/brew.away")
    try:
        extra = ["-e", "dev_macos_architecture=arm64"] if arch == "arm64" else []
        out = dev_playbook(host, "-e", "dev_macos_allow_non_darwin=true", "-e", f"dev_macos_project_dir={UNTOUCHED}", *extra)
    finally:
        host.run_test(f"mv {prefix}/bin/brew.away {prefix}/bin/brew")
    assert f"Homebrew is not installed: {prefix}/bin/brew not found" in out
    assert '/bin/bash -c "$(curl -fsSL https://raw.githubusercontent.com/Homebrew/install/HEAD/install.sh)"' in out
    untouched(host)


def test_root_is_refused_before_brew_is_called(host):
    before = len(brew_calls(host, INTEL["prefix"]))
    out = dev_playbook(host, "-e", "dev_macos_allow_non_darwin=true", "-e", f"dev_macos_project_dir={UNTOUCHED}", user="root")
    assert "This playbook runs as your own user, never as root" in out
    assert len(brew_calls(host, INTEL["prefix"])) == before
    untouched(host)


def test_linux_is_refused_without_the_test_override(host):
    out = dev_playbook(host, "-e", f"dev_macos_project_dir={UNTOUCHED}")
    assert "sets up a macOS development machine, and this host runs Linux" in out
    untouched(host)


def test_unknown_queue_mode_is_refused(host):
    out = dev_playbook(
        host, "-e", "dev_macos_allow_non_darwin=true", "-e", f"dev_macos_project_dir={UNTOUCHED}", "-e", "queue_mode=kafka"
    )
    assert "value of dev_macos_queue_mode must be one of: batch, rq, celery, got: kafka" in out
    untouched(host)


# --- celery with RabbitMQ (last: it adds a formula and a service to /opt/homebrew) ------------
def test_rabbitmq_broker_is_installed_started_and_pinged(host):
    """Celery's other broker. No RabbitMQ server here: the double's rabbitmq-diagnostics answers
    `ping` only while `brew services` has the service started, so the role's wait is still real."""
    dev_playbook(
        host, "-e", "dev_macos_allow_non_darwin=true", "-e", f"dev_macos_project_dir={UNTOUCHED}",
        "-e", "dev_macos_architecture=arm64", "-e", "queue_mode=celery", "-e", "dev_macos_celery_broker=rabbitmq",
        "--tags", "homebrew,packages,broker", rc=0,
    )
    calls = [c["argv"] for c in brew_calls(host, ARM["prefix"])]
    assert ["install", "rabbitmq"] in calls, calls
    assert calls.count(["services", "start", "rabbitmq"]) == 1, calls
    ping = as_developer(host, f"{ARM['prefix']}/opt/rabbitmq/sbin/rabbitmq-diagnostics -q ping")
    assert ping.rc == 0 and "Ping succeeded" in ping.stdout
    untouched(host)
