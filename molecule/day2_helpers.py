"""Helpers of the day-2 suites: the playbooks/*.yml of "Operating it" run for real, from testinfra.

Each playbook runs against this container only, with the scenario's inventory (Molecule's verify
environment), in plain text (no colours) and with stderr merged into stdout in order, as an
operator would see it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from e2e_helpers import MANAGE, write_recipients


def run_playbook(host, playbook: str, *extra_vars: str, check: bool = False) -> subprocess.CompletedProcess:
    """ansible-playbook playbooks/<playbook> --limit <this container> [-e ...] [--check]."""
    project = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    args = [str(Path(sys.executable).with_name("ansible-playbook")), f"playbooks/{playbook}",
            "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", host.backend.host]
    for value in extra_vars:
        args += ["-e", value]
    if check:
        args.append("--check")
    return subprocess.run(
        args, cwd=project,
        env={**os.environ, "ANSIBLE_ROLES_PATH": f"{project}/roles", "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_FORCE_COLOR": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=900,
    )


def flat(output: str) -> str:
    """The output with the YAML callback's line wrapping undone (one space between words)."""
    return " ".join(output.split())


def recap(output: str, host) -> dict[str, int]:
    """The PLAY RECAP counters of this container."""
    match = re.search(rf"^{re.escape(host.backend.host)}\s*:(.*)$", output, re.M)
    assert match, output[-3000:]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def assert_ok_and_unchanged(result: subprocess.CompletedProcess, host) -> None:
    """The play succeeded and changed nothing (a read-only playbook)."""
    assert result.returncode == 0, result.stdout[-4000:]
    counters = recap(result.stdout, host)
    assert counters["failed"] == 0 and counters["changed"] == 0, (counters, result.stdout[-4000:])


def assert_refused(result: subprocess.CompletedProcess, message: str) -> None:
    """The play failed, saying `message` (compared with the line wrapping undone)."""
    assert result.returncode != 0, result.stdout[-4000:]
    assert message in flat(result.stdout), result.stdout[-4000:]


def submit_in_unit(host, count: int, subject: str) -> str:
    """Submit a campaign from a transient unit (edupulse-send-*), as the README suggests for long
    batch sends: its output, and batch mode's "batch email" lines, then go to journald (tagged
    edupulse-manage), where edupulse-mail-log finds them. Returns the campaign id."""
    subject = f"{subject} {uuid.uuid4().hex[:8]}"
    recipients = write_recipients(host, count)
    host.run_expect([0], f"systemd-run --quiet --wait --collect --unit=edupulse-send-{uuid.uuid4().hex[:8]} "
                         f"{MANAGE} send_campaign --subject {shlex.quote(subject)} --body 'Dear student' "
                         f"--recipients-file {recipients}")
    code = f"from bulk_email.models import Campaign; print(Campaign.objects.get(subject={subject!r}).id)"
    return host.check_output(f"{MANAGE} shell --verbosity 0 -c {shlex.quote(code)}").strip()


def container_now(host) -> int:
    """The container's clock, in Unix seconds (journalctl takes @<seconds>)."""
    return int(host.check_output("date +%s"))
