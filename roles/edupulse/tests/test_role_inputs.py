"""lookup_plugins/edupulse_role_inputs.py: what a role reads is an input; what it does not, is not.

A small role in a temporary roles directory, run by ansible-playbook on this machine (a local
connection, no facts): its default follows another variable, its template names a variable, its
private variable and `omit` are no inputs, and any role file is part of the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOOKUPS = Path(__file__).resolve().parents[1] / "lookup_plugins"


@pytest.fixture
def roles(tmp_path):
    role = tmp_path / "roles" / "demo"
    for sub in ("defaults", "vars", "tasks", "templates"):
        (role / sub).mkdir(parents=True)
    (role / "defaults" / "main.yml").write_text('demo_port: 80\ndemo_upstream: "{{ other_upstream }}"\n')
    (role / "vars" / "main.yml").write_text("__demo_file: /etc/demo.conf\n")
    (role / "templates" / "demo.j2").write_text("listen {{ demo_port }}; proxy {{ demo_upstream }}; {{ omit }}\n")
    (role / "tasks" / "main.yml").write_text(
        "- ansible.builtin.debug:\n    msg: \"{{ lookup('edupulse_role_inputs', role_path) }}\"\n")
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")  # not the repository's (its callbacks print too)
    (tmp_path / "play.yml").write_text("- hosts: localhost\n  gather_facts: false\n  roles: [demo]\n")
    return tmp_path


def inputs(roles: Path, *extra: str) -> dict:
    env = dict(os.environ, ANSIBLE_LOOKUP_PLUGINS=str(LOOKUPS), ANSIBLE_ROLES_PATH=str(roles / "roles"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_CONFIG=str(roles / "ansible.cfg"))
    out = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), str(roles / "play.yml"), "-i", "localhost,",
         "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}", "-e", "other_upstream=a", *extra],
        cwd=roles, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout)
    return result["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]


def test_the_inputs_are_what_the_role_names(roles):
    base = inputs(roles)
    assert set(base) == {"code", "demo_port", "demo_upstream", "other_upstream"}, sorted(base)


def test_a_variable_a_default_reads_changes_the_default_too(roles):
    base, other = inputs(roles), inputs(roles, "-e", "other_upstream=b")
    assert {key for key in base if base[key] != other[key]} == {"demo_upstream", "other_upstream"}


def test_variables_the_role_does_not_read_are_no_inputs(roles):
    assert inputs(roles) == inputs(roles, "-e", "unrelated=1", "-e", "__demo_file=/elsewhere")


def test_a_changed_role_file_changes_the_code(roles):
    base = inputs(roles)
    (roles / "roles" / "demo" / "templates" / "demo.j2").write_text("listen {{ demo_port }};\n")
    changed = inputs(roles)
    assert changed["code"] != base["code"]


def test_a_readme_or_a_test_is_not_code(roles):
    base = inputs(roles)
    (roles / "roles" / "demo" / "README.md").write_text("# Role `demo`\n")
    (roles / "roles" / "demo" / "tests").mkdir()
    (roles / "roles" / "demo" / "tests" / "test_demo.py").write_text("def test_demo(): pass\n")
    assert inputs(roles)["code"] == base["code"]


def test_a_task_file_main_does_not_reach_is_another_playbooks_entry_point(roles):
    """A day-2 or switch step's variables (the mode a switch comes from) are no converge input."""
    tasks = roles / "roles" / "demo" / "tasks"
    (tasks / "report.yml").write_text("- ansible.builtin.debug:\n    msg: \"{{ report_since }}\"\n")
    (roles / "roles" / "demo" / "meta").mkdir()
    (roles / "roles" / "demo" / "meta" / "argument_specs.yml").write_text(
        "argument_specs:\n  report:\n    options:\n      report_since: {type: str}\n")
    (tasks / "converge.yml").write_text("- ansible.builtin.debug:\n    msg: \"{{ demo_listen }}\"\n")
    (tasks / "main.yml").write_text((tasks / "main.yml").read_text()
                                    + "- ansible.builtin.import_tasks: converge.yml\n")
    base = inputs(roles, "-e", "report_since=1h", "-e", "demo_listen=a")
    assert "demo_listen" in base and "report_since" not in base, sorted(base)
    assert inputs(roles, "-e", "report_since=2h", "-e", "demo_listen=a") == base
