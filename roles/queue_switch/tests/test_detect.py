"""tasks/detect.yml on a host deployed before the state file existed: the app itself says which
queue mode (and Celery broker) it runs, through its manage wrapper, as the services load their
settings; an app that cannot say stops the run with a clear error; a host without the app is a
first deployment. Run on localhost with a stand-in wrapper that runs the bundled example app
(patched by app_patches/apply.py, as a deployment is) with the environment of the case."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PYTHON = Path(sys.executable)


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("detect")
    project = work / "project"
    subprocess.run(["cp", "-r", str(REPO / "example_app"), str(project)], check=True)
    subprocess.run([str(PYTHON), str(REPO / "app_patches/apply.py"), "--project", str(project), "--mode", "celery",
                    "--json"], check=True, capture_output=True, text=True)
    return project


def detect(tmp_path: Path, app: Path, env: dict[str, str] | None, *extra: str) -> subprocess.CompletedProcess:
    """Run detect.yml with a wrapper that starts the app with env (None: no app on the host)."""
    manage = tmp_path / "edupulse-manage"
    if env is not None:
        env = {"DJANGO_SECRET_KEY": "k" * 40, "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), **env}
        manage.write_text(f"#!/bin/sh\ncd {shlex.quote(str(app))}\nexec env -i PATH=/usr/bin:/bin "
                          + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
                          + f" {shlex.quote(str(PYTHON))} manage.py \"$@\"\n")
        manage.chmod(0o755)
    playbook = tmp_path / "detect.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [{"ansible.builtin.include_role": {"name": "queue_switch", "tasks_from": "detect.yml"}},
                  {"ansible.builtin.debug": {"msg": "PREVIOUS {{ queue_switch_previous | to_json }}"}}],
    }]))
    return subprocess.run(
        [str(PYTHON.parent / "ansible-playbook"), "-i", "localhost,", str(playbook),
         "-e", f"ansible_python_interpreter={PYTHON}", "-e", f"__queue_switch_state_file={tmp_path / 'edupulse.fact'}",
         "-e", f"__edupulse_app_manage={manage}", "-e", f"edupulse_credentials_dir={tmp_path / 'credentials'}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"},
    )


def previous(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    line = next(line for line in run.stdout.splitlines() if "PREVIOUS " in line)
    return json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"].removeprefix("PREVIOUS "))


@pytest.mark.parametrize(("env", "expected"), [
    ({"BULK_EMAIL_QUEUE_MODE": "batch"}, {"queue_mode": "batch", "celery_broker": ""}),
    ({"BULK_EMAIL_QUEUE_MODE": "rq", "BULK_EMAIL_REDIS_URL": "redis://app:p%40ss@127.0.0.1:6379/0"},
     {"queue_mode": "rq", "celery_broker": ""}),
    ({"BULK_EMAIL_QUEUE_MODE": "celery", "BULK_EMAIL_CELERY_BROKER_URL": "redis://app:pw@127.0.0.1:6379/1"},
     {"queue_mode": "celery", "celery_broker": "redis"}),
    ({"BULK_EMAIL_QUEUE_MODE": "celery", "BULK_EMAIL_CELERY_BROKER_URL": "amqp://app:pw@10.0.0.5:5672/edupulse"},
     {"queue_mode": "celery", "celery_broker": "rabbitmq"}),
], ids=["batch", "rq", "celery-redis", "celery-rabbitmq"])
def test_a_host_without_the_state_file_is_what_its_app_runs(tmp_path, app, env, expected):
    run = detect(tmp_path, app, env, "-e", "queue_mode=batch")
    assert previous(run) == expected
    assert "pw" not in run.stdout and "p%40ss" not in run.stdout  # the probe prints no URL


def test_the_state_file_wins_and_a_host_without_the_app_is_new(tmp_path, app):
    assert previous(detect(tmp_path, app, None)) == {}
    (tmp_path / "edupulse.fact").write_text('{"queue_mode": "rq", "celery_broker": ""}\n')
    assert previous(detect(tmp_path, app, {"BULK_EMAIL_QUEUE_MODE": "batch"})) == {"queue_mode": "rq", "celery_broker": ""}


def test_an_app_that_cannot_say_stops_the_run_naming_the_state_file(tmp_path, app):
    run = detect(tmp_path, app, {"BULK_EMAIL_QUEUE_MODE": "celery"})
    assert run.returncode != 0
    out = " ".join(run.stdout.split())
    assert "did not say which queue mode it runs" in out and "BULK_EMAIL_CELERY_BROKER_URL must be set" in out, out[-3000:]
    assert str(tmp_path / "edupulse.fact") in out
