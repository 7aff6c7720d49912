"""Nginx in front of the app (roles/nginx): what it does alike in every queue mode.

TLS versions, the security headers on every kind of answer, the HTTP redirect, static and media
files served by Nginx itself, the app's upload sandbox, the proxy headers and the private key.
None of it depends on the queue mode, so this suite runs in ONE scenario only: batch
(molecule/batch/molecule.yml lists molecule/shared/any_mode), on both of its platforms, Debian 12
and 13, because the Nginx (and OpenSSL) versions differ between the releases. The per-mode
checks (monitoring pages, Flower, allow-list, gixy on each mode's configuration) stay in
molecule/shared/tests/test_nginx.py, which every single-host scenario runs.

Requests are made inside the container with python3's urllib (loopback only, certificate not
verified: it may be the self-signed one), so that the test sees exactly what a client sees.
"""

from __future__ import annotations

import re
import uuid

import pytest
from e2e_helpers import NGINX_404, assert_security_headers, env_value, fetch, site_config


@pytest.fixture(scope="module")
def rendered_config(host) -> str:
    """The whole configuration as Nginx reads it (`nginx -T`: every file, in include order)."""
    return host.check_output("nginx -T 2>/dev/null")


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


def test_media_files_are_served_by_nginx_with_the_security_headers(host):
    root, url = env_value(host, "DJANGO_MEDIA_ROOT"), env_value(host, "DJANGO_MEDIA_URL")
    name = f"nginx-test-{uuid.uuid4().hex}.txt"
    content = uuid.uuid4().hex
    path = f"{root}/{name}"
    host.run_expect([0], f"printf %s {content} > {path} && chmod 0644 {path}")
    try:
        answer = fetch(host, f"{url}{name}")
        assert answer["status"] == 200, answer
        assert answer["body"] == content
        assert_security_headers(answer)
        # Nginx's own 404 (Django's never has its signature): the prefix never reaches Django.
        missing = fetch(host, f"{url}missing-{name}")
        assert missing["status"] == 404 and NGINX_404 in missing["body"], missing
        assert_security_headers(missing)
    finally:
        host.run_expect([0], f"rm -f {path}")


def test_the_app_can_write_uploads_inside_its_sandbox(host):
    """Gunicorn runs with ProtectSystem=strict, so only its ReadWritePaths= are writable: the
    media directory must lie in one of them, and belong to (and be writable by) the app's user."""
    root = env_value(host, "DJANGO_MEDIA_ROOT")
    unit = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show -p User -p Group -p ProtectSystem -p ReadWritePaths edupulse-gunicorn"
        ).splitlines()
    )
    assert unit["ProtectSystem"] == "strict", unit
    writable = [path.lstrip("-+") for path in unit["ReadWritePaths"].split()]
    assert any(root == path or root.startswith(path.rstrip("/") + "/") for path in writable), (root, writable)
    media = host.file(root)
    assert media.is_directory and (media.user, media.group) == (unit["User"], unit["Group"]), root
    probe = f"{root}/upload-probe-{uuid.uuid4().hex}"
    try:
        host.run_expect([0], f"runuser -u {unit['User']} -- sh -c 'echo upload > {probe}'")
        assert host.file(probe).user == unit["User"]
    finally:
        host.run_expect([0], f"rm -f {probe}")


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
    site = site_config(rendered_config)
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
