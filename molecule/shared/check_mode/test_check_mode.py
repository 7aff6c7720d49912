"""Check mode on the converged host: `--check` must report no change, in every scenario.

Runs first in verify (Molecule sorts the test paths; this directory sorts before the scenario's
own tests), right after converge and idempotence, so the host is exactly as converged. A task
that reports "changed" here would tell an operator's dry run that a deploy changes something it
does not (a pip install, a restart), and hide the real changes among them.
"""

from __future__ import annotations

import functools
import subprocess

from e2e_helpers import changed_tasks, converge_hostname, play_recap, run_converge


@functools.cache
def check_run() -> subprocess.CompletedProcess:
    """One `--check` run of the scenario's converge for all its hosts (each test reads its own)."""
    return run_converge("--check")


def test_check_mode_on_the_converged_host_changes_nothing(host):
    result = check_run()
    assert result.returncode == 0, result.stdout[-4000:]
    name = converge_hostname(host)
    counters = play_recap(result.stdout, name)
    assert counters["failed"] == 0 and counters["unreachable"] == 0, result.stdout[-4000:]
    changed = [line for line in changed_tasks(result.stdout) if f"[{name}]" in line]
    assert counters["changed"] == 0, "\n".join(changed) or result.stdout[-4000:]
