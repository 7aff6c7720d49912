"""pytest plugin: run the tests against example_app as patched by apply.py.

The suite must test what the playbook deploys, so instead of importing
app_patches/bulk_email directly it copies example_app to a temporary
directory, runs apply.py on the copy (the same command the Ansible role
runs), puts the copy first on sys.path and sets DJANGO_SETTINGS_MODULE.

This happens in ``pytest_load_initial_conftests`` with tryfirst, i.e.
before pytest-django's own hook reads DJANGO_SETTINGS_MODULE and sets
Django up; a conftest.py would be imported too late for that.

The copy is patched with ``--mode rq`` and runs with BULK_EMAIL_QUEUE_MODE=rq,
the superset of batch (django_rq installed, RQ_QUEUES from
BULK_EMAIL_REDIS_URL, /django-rq/ mounted); bulk_email/tests/conftest.py
makes new campaigns batch campaigns unless a test asks for rq. With
EDUPULSE_TEST_QUEUE_MODE=celery (the second pytest run of ``make unit``) the
copy is patched and run in celery mode instead, and only the tests marked
``queue_mode("celery")`` are collected; the first run leaves them out. Each
test thus runs once, against a project set up the way its mode deploys it. The Redis URL names a loopback port
chosen here and an ACL user; the ``redis_server`` fixture starts a
redis-server there with that user when a test needs it.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_APP = REPO / "example_app"
APPLY = REPO / "app_patches" / "apply.py"
# The example app's own code changes that deployments apply too (apply.py --patch).
EXAMPLE_PATCHES = sorted((REPO / "app_patches" / "patches" / "example_app").glob("*.patch"))

# The environment the test project runs with; the SMTP tests point the
# email settings at their own loopback server through pytest-django's
# `settings` fixture.
TEST_ENV = {
    "DJANGO_SETTINGS_MODULE": "edupulse.settings",
    "DJANGO_SECRET_KEY": "tests-only-secret-key",
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "testserver,localhost",
    "EMAIL_HOST": "127.0.0.1",
    "EMAIL_PORT": "25",
    "EMAIL_HOST_USER": "",
    "EMAIL_HOST_PASSWORD": "",
    "EMAIL_USE_TLS": "false",
    "EMAIL_USE_SSL": "false",
    "DEFAULT_FROM_EMAIL": "EduPulse <noreply@edupulse.test>",
    "BULK_EMAIL_BATCH_DELAY": "0",
    "BULK_EMAIL_QUEUE_MODE": "rq",
}
REDIS_USER = "edupulse-app"
# Variables a developer's shell might set that would change test results.
CLEARED_ENV = [
    "EMAIL_BACKEND", "EMAIL_TIMEOUT", "DJANGO_SQLITE_PATH", "DJANGO_STATIC_ROOT",
    "BULK_EMAIL_BATCH_SIZE", "BULK_EMAIL_DAILY_QUOTA", "BULK_EMAIL_MAX_ATTEMPTS",
    "BULK_EMAIL_RETRY_BACKOFF", "BULK_EMAIL_RETRY_BACKOFF_MAX", "BULK_EMAIL_QUOTA_HOOK",
    "BULK_EMAIL_CLAIM_TIMEOUT", "BULK_EMAIL_RQ_RETRY_INTERVALS", "BULK_EMAIL_HOLD_FILE",
    "BULK_EMAIL_BATCH_SPOOL_DIR", "EMAIL_USE_LOCALTIME",
    "BULK_EMAIL_CELERY_TASK_TIME_LIMIT", "BULK_EMAIL_CELERY_RETRY_BACKOFF",
    "BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX", "BULK_EMAIL_CELERY_MAX_RETRIES",
    "BULK_EMAIL_CELERY_VISIBILITY_TIMEOUT", "BULK_EMAIL_CELERY_RESULT_EXPIRES",
    "BULK_EMAIL_CELERY_TIMEZONE",
]

_workdir: Path | None = None


def free_port() -> int:
    """A loopback port that is free now, for the test redis-server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MODE_VARIABLE = "EDUPULSE_TEST_QUEUE_MODE"
TEST_MODES = ("rq", "celery")


def test_mode() -> str:
    """The queue mode of this pytest run (rq unless EDUPULSE_TEST_QUEUE_MODE says celery)."""
    mode = os.environ.get(MODE_VARIABLE, "").strip() or "rq"
    if mode not in TEST_MODES:
        raise pytest.UsageError(f"{MODE_VARIABLE} must be one of {', '.join(TEST_MODES)}, got {mode!r}")
    return mode


def build_patched_project(workdir: Path, mode: str = "rq") -> Path:
    """Copy example_app into workdir and patch it with apply.py (and the example app's
    patches: its staff page then sends through bulk_email.api); return the project dir."""
    project = workdir / "project"
    shutil.copytree(
        EXAMPLE_APP,
        project,
        ignore=shutil.ignore_patterns("tests", "__pycache__", "*.pyc", "db.sqlite3*", "staticfiles"),
    )
    completed = subprocess.run(
        [sys.executable, str(APPLY), "--project", str(project), "--mode", mode, "--json",
         *(arg for patch in EXAMPLE_PATCHES for arg in ("--patch", str(patch)))],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise pytest.UsageError(f"apply.py failed on the test project:\n{completed.stderr}")
    summary = json.loads(completed.stdout.splitlines()[-1])
    if not summary["changed"]:
        raise pytest.UsageError("apply.py reported no change on a fresh copy of example_app")
    return project


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    global _workdir
    _workdir = Path(tempfile.mkdtemp(prefix="edupulse-tests-"))
    mode = test_mode()
    project = build_patched_project(_workdir, mode)
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    os.environ.update(TEST_ENV)
    os.environ["BULK_EMAIL_QUEUE_MODE"] = mode
    os.environ["DJANGO_SQLITE_PATH"] = str(_workdir / "db.sqlite3")
    os.environ["DJANGO_STATIC_ROOT"] = str(_workdir / "static")
    password = secrets.token_hex(8)
    port = free_port()
    os.environ["BULK_EMAIL_REDIS_URL"] = f"redis://{REDIS_USER}:{password}@127.0.0.1:{port}/0"
    # The guide's broker database 1, on the same private redis-server as the rq tests' queues.
    os.environ["BULK_EMAIL_CELERY_BROKER_URL"] = f"redis://{REDIS_USER}:{password}@127.0.0.1:{port}/1"
    sys.path.insert(0, str(project))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "queue_mode(mode): run only in the pytest run whose test project is in that mode"
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Outside the celery run, do not even import test_celery*.py: its models need
    django-celery-beat/results in INSTALLED_APPS, which only the celery project has."""
    if collection_path.name.startswith("test_celery") and test_mode() != "celery":
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests of this run's mode: unmarked ones belong to the rq (default) run."""
    mode = test_mode()
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("queue_mode")
        wanted = marker.args[0] if marker else "rq"
        (selected if wanted == mode else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def pytest_report_header(config: pytest.Config) -> str:
    return f"edupulse test project (example_app patched by apply.py --mode {test_mode()}): {_workdir}/project"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _workdir is not None:
        shutil.rmtree(_workdir, ignore_errors=True)
