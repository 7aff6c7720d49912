"""Each role's validate.yml runs once per host and run, and still runs when a role is used alone.

playbooks/preflight.yml runs every role's validate.yml before any host changes; the role's own
run then skips it (validate.yml notes `__<role>_validated`). A role used on its own, without the
preflight, must still run them before its first change. Both on this machine with a local
connection, in check mode and with `--tags validate` (only the checks run, nothing changes):
host `checked` gets the preflight's include and then the role, host `alone` only the role.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = ["batch_sender", "celery", "edupulse_app", "nginx", "postgresql", "rabbitmq", "redis", "rqworker", "smtp_sink"]
# A worker role runs after roles/edupulse_app (it reads edupulse_app_runtime), in its own mode.
WORKER_MODES = {"batch_sender": "batch", "rqworker": "rq", "celery": "celery"}

PLAYBOOK = """
- name: The preflight's include, then the role, as site.yml runs them
  hosts: all
  gather_facts: false
  tasks:
    - name: The app first, for a worker role (as playbooks/app.yml runs them)
      ansible.builtin.include_role:
        name: edupulse_app
      when: app_first | bool
      tags: [validate]

    - name: As playbooks/preflight.yml does
      ansible.builtin.include_role:
        name: "{{ role }}"
        tasks_from: validate.yml
        apply:
          tags: [validate]
      when: inventory_hostname == 'checked'
      tags: [validate]

    - name: The role's own run
      ansible.builtin.include_role:
        name: "{{ role }}"
      tags: [validate]
"""


def run(role: str, tmp_path: Path) -> dict:
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    hosts = {"checked": {}, "alone": {}}
    inventory = {"all": {"children": {"web": {"hosts": hosts}, "workers": {"hosts": hosts}},
                         "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    (tmp_path / "hosts.yml").write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_RETRY_FILES_ENABLED="0")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), str(tmp_path / "play.yml"), "-i", str(tmp_path / "hosts.yml"),
         "--check", "--tags", "validate", "-e", f"role={role}", "-e", f"app_first={role in WORKER_MODES}",
         "-e", f"queue_mode={WORKER_MODES.get(role, 'rq')}", "-e", f"edupulse_credentials_dir={tmp_path / 'credentials'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert "{" in out.stdout, out.stderr[-2000:]
    # ansible.cfg's profile_tasks prints a line before and its recap after the JSON.
    return json.JSONDecoder().raw_decode(out.stdout[out.stdout.index("{"):])[0]


def ran(result: dict, task: str, host: str) -> list[dict]:
    """The results of `task` ("role : name") on `host` that were not skipped, in order."""
    return [t["hosts"][host] for play in result["plays"] for t in play["tasks"]
            if t["task"]["name"] == task and host in t["hosts"] and not t["hosts"][host].get("skipped")]


@pytest.mark.parametrize("role", ROLES)
def test_validate_runs_once_after_the_preflight_and_still_alone(role, tmp_path):
    result = run(role, tmp_path)
    check = f"{role} : Check the variables against meta/argument_specs.yml"
    assert len(ran(result, check, "checked")) == 1, f"{role}: validate.yml ran {len(ran(result, check, 'checked'))} times"
    assert len(ran(result, check, "alone")) == 1, f"{role} used alone: validate.yml ran {len(ran(result, check, 'alone'))} times"
    assert result["stats"]["checked"]["failures"] == 0 and result["stats"]["alone"]["failures"] == 0, result["stats"]
