"""A configuration Nginx refuses never reaches the running site (roles/nginx, validate:).

Runs the Nginx play for real against this container with a value that passes the role's own
checks but that `nginx -t` rejects, then checks that the play failed on it and that the site
kept its configuration and kept answering. Needs Molecule's verify environment (inventory).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_nginx import fetch, queue_mode

SITE = "/etc/nginx/sites-available/edupulse.conf"
BROKEN = "99999999999999999999m"


def test_a_site_config_nginx_refuses_fails_the_play_and_the_site_keeps_serving(host):
    before = host.file(SITE).md5sum
    pid = host.check_output("systemctl show -p MainPID --value nginx")
    playbook = Path(sys.executable).with_name("ansible-playbook")
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    result = subprocess.run(
        [
            str(playbook), "playbooks/nginx.yml",
            "-i", os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit", host.backend.host,
            "-e", f"queue_mode={queue_mode(host)}",
            "-e", f"nginx_client_max_body_size={BROKEN}",
        ],
        cwd=project,
        # Molecule's ansible.cfg names the roles relative to the scenario directory.
        env={**os.environ, "ANSIBLE_ROLES_PATH": f"{project}/roles"},
        capture_output=True, text=True, check=False, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "client_max_body_size" in output, output[-3000:]
    assert host.file(SITE).md5sum == before
    assert BROKEN not in host.file(SITE).content_string
    assert host.check_output("systemctl show -p MainPID --value nginx") == pid
    assert host.run("nginx -t").rc == 0
    assert fetch(host, "/healthz/")["status"] == 200
