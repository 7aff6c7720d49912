"""Render the role's templates exactly as Ansible renders them on a server, on the controller.

One `ansible-playbook` run on localhost (connection local) loads the role's defaults and
internal variables (`import_role: tasks_from=runtime.yml`, the task that publishes the app's
layout, with roles/edupulse's defaults; generated credentials go to the output directory) and
renders the requested templates with the given variables into a directory. Going through
Ansible, not bare Jinja2, keeps its filters (`urlsplit`, `comment`, `bool`, roles/edupulse's
`edupulse_env`) and its variable precedence, so the tests see the file a server gets. A job
may name another role (`"role": "celery"`): its template is rendered with that role's defaults
and internal variables too (play vars_files: below the job's own variables, as a role's are).

`systemd_env` parses a rendered env file as systemd's EnvironmentFile= does.
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


def render(out_dir: Path, jobs: list[dict], check: bool = True) -> dict[str, str]:
    """Render each job {"name", "template", "vars"[, "role"]} into out_dir; return {name: text}.

    With check=False a failed run is no assertion: the result is {"_failed": output} instead.
    """
    # One template task per job, each with its own variables (task vars override the role's).
    tasks: list[dict] = [{"ansible.builtin.import_role": {"name": "edupulse_app", "tasks_from": "runtime.yml"}}]
    other_roles: list[str] = []
    for job in jobs:
        role = job.get("role", ROLE.name)
        if role != ROLE.name and role not in other_roles:
            other_roles.append(role)
        tasks.append({
            "name": f"Render {job['name']}",
            "ansible.builtin.template": {
                "src": str(REPO / "roles" / role / "templates" / job["template"]),
                "dest": str(out_dir / job["name"]),
                "mode": "0600",
            },
            "vars": job["vars"],
        })
    vars_files = [str(path) for role in other_roles
                  for path in (REPO / "roles" / role / "defaults/main.yml", REPO / "roles" / role / "vars/main.yml")
                  if path.exists()]
    playbook = [{"name": "Render edupulse_app templates", "hosts": "localhost", "connection": "local",
                 "gather_facts": False, "vars": {"edupulse_credentials_dir": str(out_dir / ".credentials")},
                 "vars_files": vars_files, "tasks": tasks}]
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
    if not check and run.returncode != 0:
        return {"_failed": run.stdout + run.stderr}
    assert run.returncode == 0, run.stdout + run.stderr
    return {job["name"]: (out_dir / job["name"]).read_text() for job in jobs}


# systemd's EnvironmentFile= parser (src/basic/env-file.c, parse_env_file_internal), state by
# state: comments (# or ;) at the start of a line, KEY=, then unquoted text (backslash escapes
# the next character, a backslash-newline continues the line, trailing whitespace is dropped),
# '...' verbatim, or "..." where a backslash before one of "\`$ or a newline is an escape and
# before anything else is kept with that character.
SHELL_NEED_ESCAPE = '"\\`$'


def parse_systemd_env(text: str) -> dict[str, str]:
    """KEY=value assignments of an env file as systemd reads them (later ones win)."""
    values: dict[str, str] = {}
    state, key, value, last_nonspace = "pre_key", "", "", 0

    def push() -> None:
        name = key.strip()
        if name:
            values[name] = value

    for c in text + "\n":
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif not c.isspace():
                state, key = "key", c
        elif state == "key":
            if c == "\n":
                state, key = "pre_key", ""  # a line without "=" is ignored
            elif c == "=":
                state, value = "pre_value", ""
            else:
                key += c
        elif state == "pre_value":
            if c == "\n":
                push()
                state, key = "pre_key", ""
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\":
                state = "value_escape"
            elif not c.isspace():
                state, value = "value", value + c
                last_nonspace = len(value)
        elif state == "value":
            if c == "\n":
                value = value[:last_nonspace]
                push()
                state, key = "pre_key", ""
            elif c == "\\":
                state = "value_escape"
            else:
                value += c
                if not c.isspace():
                    last_nonspace = len(value)
        elif state == "value_escape":
            state = "value"
            if c != "\n":
                value += c
                last_nonspace = len(value)
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value += c
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in SHELL_NEED_ESCAPE:
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "comment":
            if c == "\n":
                state = "pre_key"
    return values


@pytest.fixture(scope="session")
def render_templates():
    """The render() function, for the tests of this directory."""
    return render


@pytest.fixture(scope="session")
def systemd_env():
    """parse_systemd_env(), for the tests of this directory."""
    return parse_systemd_env
