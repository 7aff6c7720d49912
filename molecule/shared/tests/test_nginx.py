"""Nginx in front of the app (roles/nginx): what depends on the queue mode, in every mode.

Requests are made inside the container with python3's urllib (loopback only, certificate not
verified: it may be the self-signed one), so that the test sees exactly what a client sees.
The checks read the queue mode from the app's env file, so one file serves every scenario.
What Nginx does alike in every mode (TLS, headers, static and media files, error pages, the
refused configuration and the graceful reload) is in molecule/shared/any_mode, which runs in
one scenario only (batch, on both Debian releases).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import FETCH, NGINX_404, assert_security_headers, fetch, queue_mode, site_config

SITE_LINK = "/etc/nginx/sites-enabled/edupulse.conf"
HTPASSWD = "/etc/nginx/edupulse-flower.htpasswd"
FLOWER_ENV = "/etc/edupulse/flower.env"
# Nginx's basic auth realm (roles/nginx/vars); Flower's own auth says realm="flower".
NGINX_FLOWER_CHALLENGE = 'Basic realm="EduPulse Flower"'
FLOWER_PORT = 5555
REDIS_PORT = 6379


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
    # Both follow edupulse_flower_enabled (roles/edupulse): /flower/ where Flower listens, only there.
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
