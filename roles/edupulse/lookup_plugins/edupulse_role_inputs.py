# -*- coding: utf-8 -*-
"""Digests of everything a role's converge depends on, for the edupulse_converged module.

A role may skip its converge tasks only when nothing they read has changed, so the inputs are
taken wide rather than listed by hand (a list would miss the next variable someone adds):

* ``code``: what every role of the project runs (tasks, templates, files, vars, defaults, handlers,
  meta and plugins; not its README or tests): one changed template, task or plugin, in this role
  or in one it includes, runs every role again once;
* one entry per variable: every name that occurs in the role's files (the task files that
  tasks/main.yml imports or includes, however deep, templates, vars, defaults, handlers, files;
  not meta/argument_specs.yml, which documents the other entry points' variables too)
  and is a variable of the task, templated as the role would see it (so a default that reads
  another role's variable follows that variable too). The role's other task files are entry
  points of other playbooks (a switch's steps, the day-2 reports): what they read, such as the
  mode a switch comes from, is not what the converge makes;
* ``fact <name>``: each fact the role's files name as ``ansible_facts['name']`` or ``.name``;
* ``tree <path>``: the content of each controller file or directory given as ``trees`` (what a
  role copies from the controller: a variable holds only its path).

Left out: the role's own private variables (``__<role>_*``: derived from the inputs above, or
registered from the host, which the record's paths and units cover), and the names whose value
says nothing about the host's desired state or changes by itself between runs (``omit`` is a
new random string each run; check mode, tags and the playbook's path are how a run is made, not
what it makes). Values are hashed one by one: a record holds no secret, and a difference names the
variable.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: edupulse_role_inputs
short_description: Digests of a role's code, variables and facts
description:
  - Returns one dict, C(code) and one key per variable or fact the role's files name, each a SHA-256.
options:
  _terms:
    description: The role's path (role_path).
    required: true
  trees:
    description: Files and directories on the controller whose content the role copies to the host.
    type: list
    default: []
"""

import hashlib
import json
import re
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
FACT = re.compile(r"""ansible_facts(?:\[['"]([A-Za-z0-9_]+)['"]\]|\.([A-Za-z0-9_]+))""")
# Where the names a converge reads occur. Not meta/: argument_specs.yml documents every entry
# point's variables, also those of other playbooks' steps.
ROLE_DIRS = ("tasks", "templates", "vars", "defaults", "handlers", "files")
# What of a role reaches a host: its files above, its metadata and its plugins.
CODE_DIRS = (*ROLE_DIRS, "meta", "library", "module_utils", "lookup_plugins", "filter_plugins")
# How a run is made, not what it makes; or a value that changes by itself between runs.
NOT_INPUTS = {
    "omit", "item", "hostvars", "vars", "ansible_facts", "ansible_check_mode", "ansible_diff_mode",
    "ansible_verbosity", "ansible_run_tags", "ansible_skip_tags", "ansible_play_batch", "ansible_play_hosts",
    "ansible_play_hosts_all", "ansible_play_name", "ansible_play_role_names", "ansible_role_names",
    "ansible_parent_role_names", "ansible_parent_role_paths", "ansible_dependent_role_names",
    "ansible_loop", "ansible_loop_var", "ansible_index_var", "ansible_config_file", "ansible_inventory_sources",
    "ansible_version", "ansible_failed_task", "ansible_failed_result", "playbook_dir", "inventory_dir",
    "inventory_file", "role_path", "role_name", "role_names", "ansible_role_name", "ansible_collection_name",
    "ansible_search_path", "ansible_forks", "ansible_limit", "ansible_managed", "ansible_local",
    "ansible_python_interpreter", "ansible_connection", "ansible_host", "ansible_strategy",
    "edupulse_full_converge",
    # A one-run signal from roles/edupulse_app's handlers: the worker roles restart on it outside
    # their converge, and it is gone in the next run.
    "edupulse_app_workers_restart_needed",
}


def digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def main_task_files(role: Path) -> set[Path]:
    """tasks/main.yml and every task file it imports or includes, however deep."""
    found, todo = set(), [role / "tasks" / "main.yml"]
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.add(path)
        text = path.read_text(errors="replace")
        for name in re.findall(r"(?:import_tasks|include_tasks):\s*(?:\n\s+file:\s*)?([\w./-]+\.ya?ml)", text):
            todo.append(path.parent / name)
    return found


def role_files(role: Path) -> list[Path]:
    tasks = main_task_files(role)
    return sorted(path for sub in ROLE_DIRS if (role / sub).is_dir()
                  for path in (role / sub).rglob("*")
                  if path.is_file() and (sub != "tasks" or path in tasks))


def tree_digest(root: Path, code_only: bool = False) -> str:
    """Every file under ``root`` (or ``root`` itself), by relative path and content; no caches.

    ``code_only``: ``root`` is the roles directory, and only each role's CODE_DIRS count.
    """
    total = hashlib.sha256()
    for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if code_only and (len(relative.parts) < 3 or relative.parts[1] not in CODE_DIRS):
            continue
        total.update(str(relative).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return total.hexdigest()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, trees=(), **kwargs):
        if len(terms) != 1:
            raise AnsibleError("edupulse_role_inputs takes one term, the role's path (role_path)")
        role = Path(terms[0])
        private = f"__{role.name}_"
        text = "\n".join(path.read_text(errors="replace") for path in role_files(role))
        inputs = {"code": tree_digest(role.parent, code_only=True)}
        for tree in trees:
            # A relative path as a copy task finds it (the role's files/, the playbook's, ...).
            found = tree if Path(tree).is_absolute() else self.find_file_in_search_path(variables, "files", tree)
            if not found or not Path(found).exists():
                raise AnsibleError(f"edupulse_role_inputs: {tree} does not exist on the controller")
            inputs[f"tree {tree}"] = tree_digest(Path(found))
        for name in sorted(set(NAME.findall(text)) & set(variables)):
            if name in NOT_INPUTS or name.startswith(private):
                continue
            try:
                value = self._templar.template(variables[name])
            except AnsibleError:
                value = "<undefined>"
            inputs[name] = digest(value)
        facts = variables.get("ansible_facts") or {}
        for match in FACT.finditer(text):
            fact = match.group(1) or match.group(2)
            inputs[f"fact {fact}"] = digest(self._templar.template(facts.get(fact, "<undefined>")))
        return [inputs]
