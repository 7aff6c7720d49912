"""Day-2 playbooks refuse bad input before running anything: status.yml and logs.yml.

A refusal happens in the playbooks' own checks, before any role or host state is involved, the
same in every queue mode: this suite runs in ONE scenario only, batch (molecule/batch/molecule.yml
lists molecule/shared/any_mode), on both its platforms; the per-mode day-2 checks (the summary
and the log counts against the ledger) stay in molecule/shared/tests/test_day2.py.
"""

from __future__ import annotations

from day2_helpers import assert_ok_and_unchanged, assert_refused, run_playbook
from e2e_helpers import queue_mode


def test_status_refuses_an_unknown_or_contradicting_mode_before_running_anything(host):
    unknown = run_playbook(host, "status.yml", "queue_mode=bogus")
    assert_refused(unknown, "queue_mode must be one of batch, rq, celery (got 'bogus')")
    assert "TASK [edupulse_app" not in unknown.stdout

    other = next(mode for mode in ("batch", "rq", "celery") if mode != queue_mode(host))
    contradicting = run_playbook(host, "status.yml", f"queue_mode={other}")
    assert_refused(contradicting, f"queue_mode={other} was given, but {host.backend.host} runs {queue_mode(host)} mode")
    assert "TASK [edupulse_app" not in contradicting.stdout


def test_logs_work_in_check_mode_and_refuse_a_bad_range(host):
    assert_ok_and_unchanged(run_playbook(host, "logs.yml", '{"logs_since": "10 minutes ago"}', check=True), host)

    refused = run_playbook(host, "logs.yml", '{"logs_since": "the day before never"}')
    assert_refused(refused, "edupulse-mail-log: journalctl failed:")
    assert "the day before never" in refused.stdout
