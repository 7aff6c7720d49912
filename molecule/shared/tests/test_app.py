"""End-to-end checks that hold in every queue mode."""

from __future__ import annotations

from e2e_helpers import assert_delivered_exactly_once, send_campaign

APP_ROOT = "/opt/edupulse"
ENV_FILE = "/etc/edupulse/edupulse.env"


def test_gunicorn_unit_is_enabled_and_running(host):
    service = host.service("edupulse-gunicorn")
    assert service.is_enabled
    assert service.is_running


def test_gunicorn_runs_as_the_unprivileged_user(host):
    users = host.check_output("ps -o user= -C gunicorn | sort -u").split()
    assert users == ["www-data"]


def test_gunicorn_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:8000").is_listening
    assert not host.socket("tcp://0.0.0.0:8000").is_listening


def test_site_answers_through_gunicorn(host):
    out = host.check_output(
        "python3 -c \"import urllib.request as u; r = u.urlopen('http://127.0.0.1:8000/healthz/');"
        " print(r.status)\""
    )
    assert out.strip() == "200"


def test_env_file_is_readable_by_root_only(host):
    env = host.file(ENV_FILE)
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)


def test_code_and_virtualenv_are_read_only_for_the_app_user(host):
    for path in (f"{APP_ROOT}/app", f"{APP_ROOT}/venv", f"{APP_ROOT}/app/edupulse/settings.py"):
        item = host.file(path)
        assert item.user == "root", path
        assert not item.mode & 0o022, f"{path} is group/world writable"


def test_patch_blocks_are_applied_once(host):
    settings = host.file(f"{APP_ROOT}/app/edupulse/settings.py").content_string
    urls = host.file(f"{APP_ROOT}/app/edupulse/urls.py").content_string
    assert settings.count(">>> edupulse-queue") == 1
    assert urls.count(">>> edupulse-queue") == 1


def test_fifty_emails_are_delivered_exactly_once(host):
    # Batch mode has sent them when the command returns; queued modes deliver in the background.
    assert_delivered_exactly_once(host, send_campaign(host, 50)["id"], 50)
