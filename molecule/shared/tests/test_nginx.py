"""Nginx in front of the app (roles/nginx), in every queue mode.

Requests are made inside the container with python3's urllib (loopback only, certificate not
verified: it may be the self-signed one), so that the test sees exactly what a client sees.
The mode-dependent checks read the queue mode from the app's env file, so one file serves
every scenario.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import fetch

ENV_FILE = "/etc/edupulse/edupulse.env"
SITE_LINK = "/etc/nginx/sites-enabled/edupulse.conf"
HTPASSWD = "/etc/nginx/edupulse-flower.htpasswd"
SECURITY_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")
# The body of Nginx's own 404 page, which Django's never contains.
NGINX_404 = "<center>nginx</center>"

def queue_mode(host) -> str:
    match = re.search(r'^BULK_EMAIL_QUEUE_MODE="([a-z]+)"', host.file(ENV_FILE).content_string, re.M)
    assert match, f"no BULK_EMAIL_QUEUE_MODE in {ENV_FILE}"
    return match.group(1)


def assert_security_headers(answer: dict) -> None:
    """Each header present exactly once (Nginx's, the app's own copies hidden)."""
    for name in SECURITY_HEADERS:
        values = answer["headers"].get(name.lower(), [])
        assert len(values) == 1, f"{name}: {values} on a {answer['status']} answer"
    assert answer["headers"]["strict-transport-security"][0].startswith("max-age=")
    assert answer["headers"]["x-content-type-options"] == ["nosniff"]


@pytest.fixture(scope="module")
def rendered_config(host) -> str:
    """The whole configuration as Nginx reads it (`nginx -T`: every file, in include order)."""
    return host.check_output("nginx -T 2>/dev/null")


def test_nginx_unit_is_enabled_and_running(host):
    service = host.service("nginx")
    assert service.is_enabled
    assert service.is_running


def test_configuration_test_passes(host):
    assert host.run("nginx -t").rc == 0


def test_only_the_edupulse_site_is_enabled(host):
    assert host.file("/etc/nginx/sites-enabled").listdir() == ["edupulse.conf"]
    assert host.file(SITE_LINK).is_symlink


def test_nginx_listens_on_80_and_443(host):
    assert host.socket("tcp://0.0.0.0:80").is_listening
    assert host.socket("tcp://0.0.0.0:443").is_listening


def test_https_reaches_the_app_with_the_security_headers(host):
    answer = fetch(host, "/healthz/")
    assert answer["status"] == 200, answer
    assert_security_headers(answer)


def test_http_redirects_to_https(host):
    answer = fetch(host, "/healthz/?x=1", scheme="http")
    assert answer["status"] == 301, answer
    assert answer["headers"]["location"] == ["https://127.0.0.1/healthz/?x=1"]


def test_static_files_are_served_by_nginx_with_the_security_headers(host):
    # collectstatic copies Django admin's files into the static root.
    answer = fetch(host, "/static/admin/css/base.css")
    assert answer["status"] == 200, answer
    assert "cache-control" in answer["headers"]
    assert_security_headers(answer)


@pytest.mark.parametrize("path", ["/static/no-such-file.css", "/no-such-page/"])
def test_error_pages_carry_the_security_headers(host, path):
    answer = fetch(host, path)
    assert answer["status"] == 404, answer
    assert_security_headers(answer)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_1_2_and_1_3_are_accepted(host, version):
    assert fetch(host, "/healthz/", tls=version)["status"] == 200


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_older_tls_is_refused(host, version):
    answer = fetch(host, "/healthz/", tls=version)
    assert "error" in answer, answer


def test_proxy_passes_the_client_headers(rendered_config):
    site = rendered_config.split("# configuration file /etc/nginx/sites-enabled/edupulse.conf:", 1)[1]
    for header, value in (
        ("Host", "$host"),
        ("X-Real-IP", "$remote_addr"),
        ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        ("X-Forwarded-Proto", "$scheme"),
    ):
        assert re.search(rf"^\s*proxy_set_header {re.escape(header)} {re.escape(value)};", site, re.M), header


def test_private_key_is_readable_by_root_only(host, rendered_config):
    keys = set(re.findall(r"^\s*ssl_certificate_key\s+(\S+);", rendered_config, re.M))
    assert keys
    for path in keys:
        key = host.file(path)
        assert key.exists, path
        assert (key.user, key.mode) == ("root", 0o600), path


def test_monitoring_pages_follow_the_queue_mode(host):
    mode = queue_mode(host)
    rq = fetch(host, "/django-rq/")
    flower = fetch(host, "/flower/")
    if mode == "rq":
        assert NGINX_404 not in rq["body"], "rq mode: /django-rq/ must reach Django"
    else:
        assert rq["status"] == 404 and NGINX_404 in rq["body"], rq
    if mode == "celery" and host.file(HTPASSWD).exists:
        # Without credentials: Nginx's basic auth, whether or not Flower runs yet.
        assert flower["status"] == 401, flower
        assert_security_headers(flower)
    else:
        assert flower["status"] == 404 and NGINX_404 in flower["body"], flower
        assert not host.file(HTPASSWD).exists
    for path in ("/django-rq", "/flower"):
        if (path, mode) not in (("/django-rq", "rq"), ("/flower", "celery")):
            assert NGINX_404 in fetch(host, path)["body"], path


def test_flower_password_file_exists_only_where_flower_is_served_and_holds_a_hash(host, rendered_config):
    htpasswd = host.file(HTPASSWD)
    served = "upstream edupulse_flower" in rendered_config
    assert htpasswd.exists == served
    if served:
        assert (htpasswd.user, htpasswd.group, htpasswd.mode) == ("root", "www-data", 0o640)
        assert re.fullmatch(r"[^:\s]+:\$6\$[^$]+\$\S+\n", htpasswd.content_string)


def test_gixy_finds_no_issue(rendered_config, tmp_path):
    """gixy-ng (requirements.txt) on the controller, on the `nginx -T` dump of the container."""
    dump = tmp_path / "nginx-T.conf"
    dump.write_text(rendered_config)
    gixy = Path(sys.executable).with_name("gixy")
    result = subprocess.run(
        [str(gixy), "--format", "json", str(dump)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, f"gixy found issues:\n{result.stdout}\n{result.stderr}"
    assert json.loads(result.stdout or "[]") == []
