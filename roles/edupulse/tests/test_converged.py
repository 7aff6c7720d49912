"""library/edupulse_converged.py: a role's converge is skipped only while nothing it left has moved.

The module runs here as Ansible runs it (a script reading its arguments from a JSON file), on
files in a temporary directory; units and packages are left out (no systemd here).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[1] / "library" / "edupulse_converged.py"


@pytest.fixture
def site(tmp_path):
    """A managed file, a link, a directory and a path that must stay absent; the records' directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "site.conf").write_text("server {}\n")
    os.symlink("site.conf", tmp_path / "etc" / "enabled.conf")
    return tmp_path


def run(site: Path, state: str = "check", inputs: dict | None = None, check_mode: bool = False) -> dict:
    args = {"name": "demo", "state": state, "inputs": inputs or {"code": "1", "demo_port": "80"},
            "directory": str(site / "records"), "_ansible_check_mode": check_mode,
            "paths": [str(site / "etc"), str(site / "etc" / "site.conf"), str(site / "etc" / "enabled.conf"),
                      str(site / "etc" / "default.conf")]}
    arguments = site / "args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    out = subprocess.run([sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True, check=False)
    result = json.loads(out.stdout)
    assert not result.get("failed"), result
    return result


def test_no_record_is_not_converged(site):
    assert run(site)["reasons"] == ["no record of a full run yet"]


def test_a_recorded_host_as_it_was_is_converged(site):
    assert run(site, "record")["changed"] is True
    assert run(site, "record")["changed"] is False  # the same state: the record is not rewritten
    result = run(site)
    assert result["converged"] is True and result["reasons"] == [], result


def test_the_record_is_root_only(site):
    run(site, "record")
    assert stat.S_IMODE((site / "records").stat().st_mode) == 0o700
    assert stat.S_IMODE((site / "records" / "demo.json").stat().st_mode) == 0o600


def test_check_mode_records_nothing(site):
    assert run(site, "record", check_mode=True)["changed"] is True
    assert not (site / "records" / "demo.json").exists()


@pytest.mark.parametrize("drift, named", [
    (lambda site: (site / "etc" / "site.conf").write_text("server { listen 81; }\n"), "site.conf"),
    (lambda site: (site / "etc" / "site.conf").chmod(0o666), "site.conf"),
    (lambda site: (site / "etc" / "site.conf").unlink(), "site.conf"),
    (lambda site: (site / "etc" / "default.conf").write_text("the distro's default\n"), "default.conf"),
    (lambda site: ((site / "etc" / "enabled.conf").unlink(), os.symlink("other.conf", site / "etc" / "enabled.conf")),
     "enabled.conf"),
    (lambda site: (site / "etc").chmod(0o777), "etc"),
])
def test_any_drift_of_a_recorded_path_is_named(site, drift, named):
    run(site, "record")
    drift(site)
    result = run(site)
    assert result["converged"] is False
    assert any(named in reason for reason in result["reasons"]), result["reasons"]


def test_a_changed_input_is_named(site):
    run(site, "record")
    result = run(site, inputs={"code": "1", "demo_port": "81"})
    assert result["converged"] is False and result["reasons"] == ["input demo_port changed"]
    result = run(site, inputs={"code": "1", "demo_port": "80", "demo_new": "x"})
    assert result["reasons"] == ["input demo_new changed"]


def test_a_name_that_is_a_path_is_refused(site):
    arguments = site / "args.json"
    arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"name": "../x", "inputs": {}}}))
    out = subprocess.run([sys.executable, str(MODULE), str(arguments)], capture_output=True, text=True, check=False)
    assert json.loads(out.stdout)["failed"] is True


def test_absent_forgets_the_record(site):
    """A queue mode switch removes a role from the host: its record goes with it."""
    run(site, "record")
    assert run(site, "absent")["changed"] is True
    assert not (site / "records" / "demo.json").exists()
    assert run(site, "absent")["changed"] is False
    assert run(site)["reasons"] == ["no record of a full run yet"]


def test_absent_in_check_mode_keeps_the_record(site):
    run(site, "record")
    assert run(site, "absent", check_mode=True)["changed"] is True
    assert (site / "records" / "demo.json").exists()
