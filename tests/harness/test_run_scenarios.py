"""tests/harness/run-scenarios.sh: a failed scenario's failing test is named in the last lines.

CI keeps only the tail of its output. The script runs here with a stand-in `molecule` on PATH
that writes a log shaped like Molecule's (coloured, boxed, pytest's summary wrapped at 80
columns), so the test needs no Docker.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run-scenarios.sh")

FAKE_MOLECULE = r"""#!/usr/bin/env bash
# molecule test -s SCENARIO: "bad" fails a test and a task, anything else passes.
scenario=$3
box=$'\e[2m\xe2\x94\x82\e[0m'
if [[ $scenario == bad ]]; then
  printf '  %s TASK [nginx : Validate the site]\n' "$box"
  printf '  %s fatal: [bad-1]: FAILED! => {"msg": "nginx -t refused"}\n' "$box"
  printf '  %s FAILED - RETRYING: [localhost]: Wait for instance(s) deletion\n' "$box"
  printf '  %s ======== short test summary info ========\n' "$box"
  printf '  %s FAILED bad/tests/test_outage.py::test_an_smtp_outage_leaves_pe\n' "$box"
  printf '  %s   nding[ansible://bad-1] - AssertionError: 11 != 12\n' "$box"
  printf '  %s ======== 1 failed, 100 passed in 600.00s ========\n' "$box"
  for i in $(seq 1 250); do printf '  %s filler line %s\n' "$box" "$i"; done
  printf '\e[32mbad\e[0m -> \e[33mverify\e[0m: \e[31mExecuted: Failed\e[0m\n'
  printf '\e[31mERROR   \e[0m Molecule executed 1 scenario (1 failed)\n'
  printf '    \n  %s DETAILS\n' "$box"
  exit 1
fi
if [[ $scenario == wrapped ]]; then
  # A long test id: Molecule's box wraps pytest's summary line right after "FAILED".
  printf '  %s ======== short test summary info ========\n' "$box"
  printf '  %s FAILED\n' "$box"
  printf '  %s   ../shared/tests/test_day2.py::test_logs_count_the_sent_and_failed_emails_o\n' "$box"
  printf '  %s   f_a_time_range[ansible://wrapped-1]\n' "$box"
  printf '  %s ======== 1 failed, 98 passed in 183.17s ========\n' "$box"
  printf '\e[31mERROR   \e[0m Verifier tests failed\n'
  exit 1
fi
if [[ $scenario == killed ]]; then
  # pytest -v cut short: no short summary, no closing tally.
  printf 'INFO     killed -> verify: Executing Testinfra tests found in killed/tests/...\n'
  printf '  %s ============ test session starts ============\n' "$box"
  printf '  %s tests/test_switch.py::test_switch_from_batch_to_rq[ansible://killed-1] PASSED [ 40%%]\n' "$box"
  printf '  %s tests/test_switch.py::test_switch_from_rq_to_celery[ansible://killed-1] \n' "$box"
  for i in $(seq 1 250); do printf '  %s filler line %s\n' "$box" "$i"; done
  printf '\e[31mERROR   \e[0m Verifier tests failed\n'
  exit 1
fi
printf '  %s FAILED - RETRYING: [localhost]: Wait for instance(s) deletion\n' "$box"
"""


def run(tmp_path: Path, *scenarios: str, locale: str = "C.UTF-8") -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "molecule").write_text(FAKE_MOLECULE)
    (bin_dir / "molecule").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LC_ALL": locale}
    return subprocess.run(["bash", str(SCRIPT), "2", *scenarios], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


# CI may run with no locale set (C): the box character is then three bytes, not one character.
@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_the_last_lines_name_the_failed_test_and_task(tmp_path, locale):
    done = run(tmp_path, "good", "bad", locale=locale)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[-1] == "[molecule] failed: bad", lines[-1]
    # The summary comes after the log's last 200 lines and the durations, just before the end.
    assert "[molecule] bad: what failed" in lines[-10:], lines[-10:]
    text = "\n".join(lines[lines.index("[molecule] bad: what failed"):])
    assert "FAILED bad/tests/test_outage.py::test_an_smtp_outage_leaves_pe" in text, text
    assert "nding[ansible://bad-1] - AssertionError: 11 != 12" in text, text
    assert "TASK [nginx : Validate the site]" in text and 'FAILED! => {"msg"' in text, text
    assert "RETRYING" not in text and "\x1b[" not in text, text
    # pytest closed with its tally; Molecule's own ERROR lines have no continuation.
    assert "without its summary" not in text and "DETAILS" not in text, text


def test_a_verify_cut_short_shows_how_far_pytest_got(tmp_path):
    done = run(tmp_path, "killed")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    text = "\n".join(lines[lines.index("[molecule] killed: what failed"):])
    assert "pytest ended without its summary (killed, or it crashed); the last test it named:" in text, text
    assert "test_switch_from_rq_to_celery[ansible://killed-1]" in text, text
    assert "filler line 250" in text and "filler line 235" not in text, text
    assert "Verifier tests failed" in text, text


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_a_failed_line_wrapped_after_its_first_word_still_names_the_test(tmp_path, locale):
    done = run(tmp_path, "wrapped", locale=locale)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    text = "\n".join(lines[lines.index("[molecule] wrapped: what failed"):])
    assert "test_logs_count_the_sent_and_failed_emails_o" in text, text
    assert "f_a_time_range[ansible://wrapped-1]" in text, text
    assert "1 failed, 98 passed" not in text, text


def test_a_passing_run_prints_no_failure_summary(tmp_path):
    done = run(tmp_path, "good")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "what failed" not in done.stdout and "RETRYING" not in done.stdout, done.stdout
