"""Render the role's templates exactly as Ansible renders them on a server, on the controller.

One `ansible-playbook` run on localhost (connection local) loads the role's defaults and
internal variables (`import_role: tasks_from=runtime.yml`, the task that publishes the app's
layout, with roles/edupulse's defaults; generated credentials go to the output directory) and
renders the requested templates with the given variables into a directory. Going through
Ansible, not bare Jinja2, keeps its filters (`urlsplit`, `comment`, `bool`) and its variable
precedence, so the tests see the file a server gets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROLE = Path(__file__).resolve().parents[1]
REPO = ROLE.parents[1]


def render(out_dir: Path, jobs: list[dict]) -> dict[str, str]:
    """Render each job {"name", "template", "vars"} into out_dir; return {name: text}."""
    # One template task per job, each with its own variables (task vars override the role's).
    tasks: list[dict] = [{"ansible.builtin.import_role": {"name": "edupulse_app", "tasks_from": "runtime.yml"}}]
    for job in jobs:
        tasks.append({
            "name": f"Render {job['name']}",
            "ansible.builtin.template": {
                "src": str(ROLE / "templates" / job["template"]),
                "dest": str(out_dir / job["name"]),
                "mode": "0600",
            },
            "vars": job["vars"],
        })
    playbook = [{"name": "Render edupulse_app templates", "hosts": "localhost", "connection": "local",
                 "gather_facts": False, "vars": {"edupulse_credentials_dir": str(out_dir / ".credentials")},
                 "tasks": tasks}]
    path = out_dir / "render.yml"
    path.write_text(json.dumps(playbook))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    run = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}", str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return {job["name"]: (out_dir / job["name"]).read_text() for job in jobs}


@pytest.fixture(scope="session")
def render_templates():
    """The render() function, for the tests of this directory."""
    return render
