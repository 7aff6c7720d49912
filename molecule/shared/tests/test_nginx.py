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

import uuid

import pytest
from e2e_helpers import FETCH, fetch

ENV_FILE = "/etc/edupulse/edupulse.env"
SITE_LINK = "/etc/nginx/sites-enabled/edupulse.conf"
HTPASSWD = "/etc/nginx/edupulse-flower.htpasswd"
SECURITY_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")
FLOWER_ENV = "/etc/edupulse/flower.env"
# The body of Nginx's own 404 page, which Django's never contains.
NGINX_404 = "<center>nginx</center>"
# Nginx's basic auth realm (roles/nginx/vars); Flower's own auth says realm="flower".
NGINX_FLOWER_CHALLENGE = 'Basic realm="EduPulse Flower"'
FLOWER_PORT = 5555
REDIS_PORT = 6379


def env_value(host, name: str) -> str:
    """A variable of the deployed app's env file (KEY="value" lines)."""
    match = re.search(rf'^{name}="([^"]*)"', host.file(ENV_FILE).content_string, re.M)
    assert match, f"no {name} in {ENV_FILE}"
    return match.group(1)


def queue_mode(host) -> str:
    mode = env_value(host, "BULK_EMAIL_QUEUE_MODE")
    assert mode in ("batch", "rq", "celery"), mode
    return mode


def site_config(rendered_config: str) -> str:
    """Our site file out of the `nginx -T` dump."""
    return rendered_config.split("# configuration file /etc/nginx/sites-enabled/edupulse.conf:", 1)[1]


def fetch_url(host, url: str, auth: str = "") -> dict:
    """fetch() for any URL inside the container, e.g. the container's own non-loopback address."""
    out = host.check_output(f"python3 -c {shlex.quote(FETCH)} {shlex.quote(url)} {shlex.quote(auth)} any")
    return json.loads(out)


def own_address(host) -> str:
    """The container's first non-loopback IPv4 address: a request to it comes from it."""
    addresses = [a for a in host.check_output("hostname -I").split() if ":" not in a and not a.startswith("127.")]
    assert addresses, "the container has no non-loopback IPv4 address"
    return addresses[0]


def listening_ports(host) -> set[int]:
    """Ports of every listening TCP socket (`ss -Htln`, any address)."""
    lines = host.check_output("ss -Htln").splitlines()
    assert lines, "ss shows no listening socket at all"
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in lines}


def flower_credentials(host) -> str:
    match = re.search(r'^FLOWER_BASIC_AUTH="([^"]+)"', host.file(FLOWER_ENV).content_string, re.M)
    assert match, f"no FLOWER_BASIC_AUTH in {FLOWER_ENV}"
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


def test_monitoring_pages_follow_the_queue_mode(host):
    mode = queue_mode(host)
    rq = fetch(host, "/django-rq/")
    flower = fetch(host, "/flower/")
    if mode == "rq":
        # Django's staff_member_required: an anonymous user is sent to the admin login.
        assert rq["status"] == 302, rq
        location = rq["headers"]["location"][0]
        assert location.startswith("/admin/login/") and "next=/django-rq/" in location, location
        assert_security_headers(rq)
    else:
        assert rq["status"] == 404 and NGINX_404 in rq["body"], rq
    if mode == "celery":
        # Without credentials: Nginx's basic auth (its realm, not Flower's), whether or not
        # Flower runs yet.
        assert flower["status"] == 401, flower
        assert flower["headers"].get("www-authenticate") == [NGINX_FLOWER_CHALLENGE], flower["headers"]
        assert "401 Authorization Required" in flower["body"], flower
        assert_security_headers(flower)
        assert host.file(HTPASSWD).exists
    else:
        assert flower["status"] == 404 and NGINX_404 in flower["body"], flower
        assert not host.file(HTPASSWD).exists
    for path in ("/django-rq", "/flower"):
        if (path, mode) not in (("/django-rq", "rq"), ("/flower", "celery")):
            assert NGINX_404 in fetch(host, path)["body"], path


def test_flower_is_served_exactly_where_it_runs_and_no_queue_port_is_open_without_a_queue(host, rendered_config):
    mode = queue_mode(host)
    ports = listening_ports(host)
    assert 443 in ports, ports  # ss sees the sockets at all
    served = "upstream edupulse_flower" in rendered_config
    # nginx_flower_enabled follows celery_flower_enabled: /flower/ where Flower listens, only there.
    assert served == (FLOWER_PORT in ports), (served, sorted(ports))
    if mode == "celery":
        assert served, "the celery scenarios run Flower behind Nginx"
    else:
        assert FLOWER_PORT not in ports, f"{mode} mode: something listens on {FLOWER_PORT}"
    if mode == "batch":
        assert REDIS_PORT not in ports, f"batch mode: something listens on {REDIS_PORT}"


def test_monitoring_pages_refuse_addresses_outside_the_allow_list(host, rendered_config):
    """The same request from loopback and from the container's own address (eth0).

    Relies on the role's default nginx_monitoring_allow (["127.0.0.1", "::1"]): no inventory sets it.
    """
    mode = queue_mode(host)
    address = own_address(host)
    if mode == "batch":
        # No monitoring page at all: Nginx's 404 from any address.
        for path in ("/django-rq/", "/flower/"):
            answer = fetch_url(host, f"https://{address}{path}")
            assert answer["status"] == 404 and NGINX_404 in answer["body"], (path, answer)
        return
    site = site_config(rendered_config)
    allowed = re.findall(r"^\s*allow\s+(\S+);", site, re.M)
    assert "127.0.0.1" in allowed and address not in allowed, (
        f"nginx_monitoring_allow must list 127.0.0.1 (and ::1), not {address}: got {allowed}"
    )
    # Valid Flower credentials: the address is the only reason left to refuse.
    path, auth, expected = (
        ("/django-rq/", "", 302) if mode == "rq" else ("/flower/", flower_credentials(host), 200)
    )
    outside = fetch_url(host, f"https://{address}{path}", auth=auth)
    assert outside["status"] == 403 and "<center>nginx</center>" in outside["body"], outside
    assert_security_headers(outside)
    inside = fetch(host, path, auth=auth)
    assert inside["status"] == expected, inside


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
