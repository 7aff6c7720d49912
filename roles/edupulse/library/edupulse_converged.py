#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Whether a role's state on this host is still what its last full run left (one round trip)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: edupulse_converged
short_description: Compare a host with the state a role's last full run recorded, or record it
description:
  - C(state=check) reads the role's record and reports C(converged=true) only when the role's
    inputs (C(inputs), digests from the edupulse_role_inputs lookup) are the recorded ones, and
    every recorded path, unit, package and user is as recorded. Any difference is named in
    C(reasons). Nothing changes on the host.
  - C(state=record) writes the record after a full run of the role; it is changed only when the
    record's content changes. In check mode nothing is written.
  - C(state=absent) removes the record, when a role's state leaves the host (a queue mode switch).
  - A path is recorded as what it is (absent, a link and its target, a directory, or a file and
    its SHA-256) with its mode and owner, so a hand edit, a removed file or a file that should be
    absent and came back all count as differences. A unit is recorded with its ActiveState and
    UnitFileState, a package with its dpkg status and version.
options:
  name: {description: The role's name (the record's file name)., type: str, required: true}
  inputs:
    description: Digests of the role's inputs (edupulse_role_inputs); compared key by key (check and record).
    type: dict
  state: {description: check, record or absent., type: str, choices: [check, record, absent], default: check}
  paths: {description: The paths the role manages (record only)., type: list, elements: path, default: []}
  units: {description: The systemd units the role manages (record only)., type: list, elements: str, default: []}
  packages: {description: The Debian packages the role installs (record only)., type: list, elements: str, default: []}
  users: {description: The users the role creates (record only)., type: list, elements: str, default: []}
  trees:
    description: Directories whose whole content the role makes (record only); caches are left out.
    type: list
    elements: path
    default: []
  directory: {description: Where the records are kept (root only)., type: path, default: /var/lib/edupulse-converged}
"""

RETURN = r"""
converged: {description: The host is as the record says and the inputs are the recorded ones., type: bool, returned: always}
reasons: {description: What differs (check) or differed from the previous record (record)., type: list, elements: str, returned: always}
inputs: {description: The inputs as given (check), for the record of the same run., type: dict, returned: state=check}
"""

import grp
import hashlib
import json
import os
import pwd
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


def path_state(path: str) -> dict:
    """What is at ``path`` now: absent, a link, a directory or a file, with mode and owner."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"type": "absent"}
    state = {"mode": oct(stat.S_IMODE(info.st_mode)), "uid": info.st_uid, "gid": info.st_gid}
    if stat.S_ISLNK(info.st_mode):
        return {**state, "type": "link", "target": os.readlink(path)}
    if stat.S_ISDIR(info.st_mode):
        return {**state, "type": "directory"}
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return {**state, "type": "file", "sha256": digest.hexdigest()}


def tree_state(root: str) -> str:
    """One digest of every path under ``root``: relative path, type, mode, owner, file content."""
    total = hashlib.sha256()
    if not os.path.isdir(root):
        return "absent"
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if name != "__pycache__")
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(directory, name)
            total.update(os.path.relpath(path, root).encode() + b"\0" + json.dumps(path_state(path)).encode())
        total.update(os.path.relpath(directory, root).encode() + b"\0" + json.dumps(path_state(directory)).encode())
    return total.hexdigest()


def unit_states(module: AnsibleModule, units: list[str]) -> dict:
    """ActiveState and UnitFileState of each unit, in one `systemctl show`."""
    if not units:
        return {}
    rc, out, err = module.run_command(
        ["systemctl", "show", "--property=Id,ActiveState,UnitFileState", "--", *units])
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed: {err.strip()}")
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in out.strip().split("\n\n")]
    return {unit: {"active": block.get("ActiveState", ""), "file": block.get("UnitFileState", "")}
            for unit, block in zip(units, blocks)}


def package_states(module: AnsibleModule, packages: list[str]) -> dict:
    """dpkg's status and version of each package ("" when dpkg does not know it), in one call."""
    if not packages:
        return {}
    _, out, _ = module.run_command(
        ["dpkg-query", "--show", "--showformat=${Package} ${Status} ${Version}\n", *packages])
    known = {}
    for line in out.splitlines():
        name, _, rest = line.partition(" ")
        known[name.split(":")[0]] = rest
    return {package: known.get(package, "") for package in packages}


def user_states(users: list[str]) -> dict:
    """Each user's uid, primary group and home ("" when absent)."""
    result = {}
    for user in users:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            result[user] = ""
            continue
        result[user] = f"{entry.pw_uid}:{grp.getgrgid(entry.pw_gid).gr_name}:{entry.pw_dir}"
    return result


def host_state(module: AnsibleModule, paths: list, units: list, packages: list, users: list, trees: list) -> dict:
    return {
        "paths": {path: path_state(path) for path in paths},
        "trees": {tree: tree_state(tree) for tree in trees},
        "units": unit_states(module, units),
        "packages": package_states(module, packages),
        "users": user_states(users),
    }


def describe(value: object) -> str:
    """A recorded or current state in a few words (a path's type, target or digest, mode, owner)."""
    if isinstance(value, dict) and "type" in value:
        detail = {"link": f" -> {value.get('target')}", "file": f" {str(value.get('sha256'))[:12]}"}.get(value["type"], "")
        owner = f" {value['mode']} {value['uid']}:{value['gid']}" if "mode" in value else ""
        return f"{value['type']}{detail}{owner}"
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in sorted(value.items()))
    return str(value)[:40] or "absent"


def differences(record: dict, inputs: dict, now: dict) -> list[str]:
    """Each input and each recorded item that differs, named."""
    reasons = [f"input {key} changed" for key in sorted(set(inputs) | set(record.get("inputs", {})))
               if inputs.get(key) != record.get("inputs", {}).get(key)]
    for kind in ("paths", "trees", "units", "packages", "users"):
        for item, was in record.get(kind, {}).items():
            if now[kind].get(item) != was:
                reasons.append(f"{kind[:-1]} {item}: {describe(was)} recorded, {describe(now[kind].get(item))} now")
    return reasons


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "inputs": {"type": "dict"},
            "state": {"type": "str", "choices": ["check", "record", "absent"], "default": "check"},
            "paths": {"type": "list", "elements": "path", "default": []},
            "units": {"type": "list", "elements": "str", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
            "users": {"type": "list", "elements": "str", "default": []},
            "trees": {"type": "list", "elements": "path", "default": []},
            "directory": {"type": "path", "default": "/var/lib/edupulse-converged"},
        },
        required_if=[("state", "check", ["inputs"]), ("state", "record", ["inputs"])],
        supports_check_mode=True,
    )
    params = module.params
    if "/" in params["name"] or params["name"] in ("", ".", ".."):
        module.fail_json(msg=f"name must be a role's name, got {params['name']!r}")
    record_file = os.path.join(params["directory"], params["name"] + ".json")
    if params["state"] == "absent":
        present = os.path.exists(record_file)
        if present and not module.check_mode:
            os.remove(record_file)
        module.exit_json(changed=present, converged=False, reasons=[])
    try:
        with open(record_file, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        record = None
    except ValueError:
        record = {}  # unreadable: differs from anything, and is rewritten by the next record

    if params["state"] == "check":
        if record is None:
            module.exit_json(changed=False, converged=False, reasons=["no record of a full run yet"],
                             inputs=params["inputs"])
        now = host_state(module, *(list(record.get(kind, {})) for kind in ("paths", "units", "packages", "users", "trees")))
        reasons = differences(record, params["inputs"], now)
        module.exit_json(changed=False, converged=not reasons, reasons=reasons, inputs=params["inputs"])

    new = {"inputs": params["inputs"],
           **host_state(module, *(params[kind] for kind in ("paths", "units", "packages", "users", "trees")))}
    changed = new != record
    # What differs from the previous record, so that a run that rewrites it says why.
    reasons = (["no record of a full run yet"] if record is None
               else differences(record, params["inputs"], {kind: new[kind] for kind in new if kind != "inputs"}))
    if changed and not module.check_mode:
        os.makedirs(params["directory"], mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=params["directory"], prefix=".record-")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(new, out, indent=1, sort_keys=True)
        os.chmod(temporary, 0o600)
        os.replace(temporary, record_file)
    module.exit_json(changed=changed, converged=True, reasons=reasons)


if __name__ == "__main__":
    main()
