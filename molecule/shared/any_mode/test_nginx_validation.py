"""The Nginx play against the live site: a refused configuration, and a graceful reload.

Runs the Nginx play for real against this container (Molecule's verify environment and
inventory): once with a value that passes the role's own checks but that `nginx -t` rejects (the
play fails in the site's template task and the site keeps its file and keeps answering), and
once with a harmless change while requests hit the site (a reload: every request answered, the
master process unchanged, new workers), then again with the deployed values.

Neither depends on the queue mode, and each run of the play costs a minute or so: this suite runs
in ONE scenario only, batch (molecule/batch/molecule.yml), on both Debian releases (their Nginx
versions differ: `nginx -t`'s messages, reload behaviour).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from e2e_helpers import fetch, queue_mode, wait_for

SITE = "/etc/nginx/sites-available/edupulse.conf"
BROKEN = "99999999999999999999m"
SITE_TASK = "TASK [nginx : Render the EduPulse site]"
CHECKS_TASK = "TASK [nginx : Check values that a type alone cannot express]"

# Runs inside the container until the stop file appears: new connection per request (as
# browsers after a keep-alive timeout), a static file (Nginx alone) and /healthz/ (proxied).
LOAD = r"""
import json, os, ssl, sys, time, urllib.request
stop, out = sys.argv[1], sys.argv[2]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
ok, failures = 0, []
deadline = time.monotonic() + 900
while not os.path.exists(stop) and time.monotonic() < deadline:
    for path in ("/static/admin/css/base.css", "/healthz/"):
        try:
            with urllib.request.urlopen("https://127.0.0.1" + path, context=context, timeout=10) as answer:
                answer.read()
                ok += 1
        except Exception as error:
            failures.append(f"{time.time():.3f} {path}: {error!r}")
    time.sleep(0.05)
with open(out + ".part", "w") as file:
    json.dump({"ok": ok, "failed": len(failures), "failures": failures[:20]}, file)
os.replace(out + ".part", out)
"""


def run_nginx_play(host, *extra_vars: str) -> subprocess.CompletedProcess:
    """playbooks/nginx.yml against this container only, with the scenario's inventory."""
    playbook = Path(sys.executable).with_name("ansible-playbook")
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    args = [str(playbook), "playbooks/nginx.yml",
            "-i", os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit", host.backend.host,
            "-e", f"queue_mode={queue_mode(host)}"]
    for value in extra_vars:
        args += ["-e", value]
    return subprocess.run(
        args,
        cwd=project,
        # Molecule's ansible.cfg names the roles relative to the scenario directory. The role
        # uses no facts: skip gathering them.
        env={**os.environ, "ANSIBLE_ROLES_PATH": f"{project}/roles", "ANSIBLE_GATHERING": "explicit",
             # Plain text: the checks below read the output line by line ("^fatal: ").
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
        # One stream, in order: Ansible writes a failed task's message to stderr.
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=600,
    )


def task_sections(output: str) -> dict[str, str]:
    """The play's output cut at each TASK banner: banner -> what follows until the next one."""
    parts = re.split(r"^(TASK \[[^\]]*\])", output, flags=re.M)
    return {banner: body for banner, body in zip(parts[1::2], parts[2::2])}


def nginx_pids(host) -> tuple[str, set[str]]:
    master = host.check_output("systemctl show -p MainPID --value nginx")
    workers = set(host.check_output(f"ps -o pid= --ppid {master}").split())
    return master, workers


def test_a_site_config_nginx_refuses_fails_the_play_and_the_site_keeps_serving(host):
    before = host.file(SITE).md5sum
    pid = host.check_output("systemctl show -p MainPID --value nginx")
    result = run_nginx_play(host, f"nginx_client_max_body_size={BROKEN}")
    output = result.stdout
    assert result.returncode != 0, output[-3000:]
    sections = task_sections(result.stdout)
    # The role's own checks let the value through; the site's template task (its validate:,
    # nginx -t on the whole configuration) refused it, with Nginx's own message.
    assert CHECKS_TASK in sections and "fatal:" not in sections[CHECKS_TASK], output[-3000:]
    assert SITE_TASK in sections, output[-3000:]
    failed = [banner for banner, body in sections.items() if re.search(r"^fatal: ", body, re.M)]
    assert failed == [SITE_TASK], failed
    message = re.sub(r"\s+", " ", sections[SITE_TASK]).replace('\\"', '"')
    assert "failed to validate" in message, sections[SITE_TASK]
    # nginx -t's own words ("[emerg] PID#TID: ..." once its error log is set up, "nginx: [emerg] ..." before).
    assert re.search(r'\[emerg\] [^"]*"client_max_body_size" directive invalid value', message), sections[SITE_TASK]
    assert host.file(SITE).md5sum == before
    assert BROKEN not in host.file(SITE).content_string
    assert host.check_output("systemctl show -p MainPID --value nginx") == pid
    assert host.run("nginx -t").rc == 0
    assert fetch(host, "/healthz/")["status"] == 200
    assert fetch(host, "/static/admin/css/base.css")["status"] == 200


def test_a_changed_setting_is_applied_by_a_graceful_reload(host):
    before = host.file(SITE).md5sum
    current = re.search(r"^\s*proxy_connect_timeout (\d+)s;", host.file(SITE).content_string, re.M)
    assert current, "no proxy_connect_timeout in the site file"
    changed = int(current.group(1)) + 1
    master, workers = nginx_pids(host)
    assert workers, "no Nginx worker processes"
    tag = uuid.uuid4().hex[:8]
    stop, out, unit = f"/tmp/nginx-load-{tag}.stop", f"/tmp/nginx-load-{tag}.json", f"edupulse-nginx-load-{tag}"
    host.run_expect([0], f"systemd-run --quiet --collect --unit={unit} python3 -c {shlex.quote(LOAD)} {stop} {out}")
    try:
        assert wait_for(lambda: host.run(f"systemctl is-active --quiet {unit}").rc == 0, timeout=10)
        result = run_nginx_play(host, f"nginx_proxy_connect_timeout={changed}")
        output = result.stdout
        assert result.returncode == 0, output[-3000:]
        assert "RUNNING HANDLER [nginx : Reload Nginx]" in result.stdout, output[-3000:]
        # Requests keep coming for a moment after the reload, while the old workers finish.
        time.sleep(2)
        host.run_expect([0], f"touch {stop}")
        assert wait_for(lambda: host.file(out).exists, timeout=30), f"the load loop wrote no {out}"
        load = json.loads(host.file(out).content_string)
        assert load["failed"] == 0, load
        assert load["ok"] >= 20, load
        assert f"proxy_connect_timeout {changed}s;" in host.file(SITE).content_string
        new_master, _ = nginx_pids(host)
        assert new_master == master, "Nginx was restarted, not reloaded"
        # New workers replaced the old ones (which leave once their requests are done).
        assert wait_for(lambda: not (nginx_pids(host)[1] & workers), timeout=30), (workers, nginx_pids(host))
        assert nginx_pids(host)[1], "no Nginx worker after the reload"
    finally:
        host.run(f"touch {stop}; systemctl stop {unit} 2>/dev/null; rm -f {stop} {out}")
        restored = run_nginx_play(host)
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert host.file(SITE).md5sum == before, "the deployed site file was not restored"
    assert fetch(host, "/healthz/")["status"] == 200
