"""The worker roles keep a converge record too: rqworker and celery skip their converge on a host
as their last full run left it, and converge again when a file of theirs was edited by hand.

As molecule/shared/any_mode/test_converge_record.py proves for the other roles (and, in batch,
for batch_sender), with edupulse_full_converge=false as a user runs it. The hand edit is of the
workers' env file, which the workers read only when they start: the host is put back before
anything restarts. Run by the rq scenario (both Debian releases) and the celery scenario.
"""

from __future__ import annotations

import functools

from e2e_helpers import changed_tasks, check_run_without_full_converge, play_recap, queue_mode, skipped_converges

# The mode's worker role, its env file and the task that renders it.
WORKER_ROLES = {
    "rq": ("rqworker", "/etc/edupulse/rqworker.env", "rqworker : Render the workers' env file"),
    "celery": ("celery", "/etc/edupulse/celery.env", "celery : Render the workers' env file"),
}


def test_the_converged_host_skips_the_worker_roles_converge(host):
    role, _, _ = WORKER_ROLES[queue_mode(host)]
    output, name = check_run_without_full_converge(host)
    converges = skipped_converges(output, name)
    assert converges.get(role) is True, converges
    assert all(converges.values()), converges
    counters = play_recap(output, name)
    assert counters["changed"] == 0, "\n".join(changed_tasks(output)) or output[-4000:]


@functools.cache
def drifted_check_run(host) -> tuple[str, str]:
    """`--check` with the workers' env file edited by hand, then the file restored."""
    _, env_file, _ = WORKER_ROLES[queue_mode(host)]
    host.check_output(f"cp -p {env_file} /root/worker-env.saved")
    try:
        host.check_output(f"echo '# a hand edit' >> {env_file}")
        return check_run_without_full_converge(host)
    finally:
        host.check_output(f"cp -p /root/worker-env.saved {env_file} && rm /root/worker-env.saved")


def test_a_hand_edit_makes_the_worker_role_converge_and_fix_it(host):
    role, _, task = WORKER_ROLES[queue_mode(host)]
    output, name = drifted_check_run(host)
    converges = skipped_converges(output, name)
    assert converges.get(role) is False, converges
    changed = "\n".join(line for line in changed_tasks(output) if f"[{name}]" in line)
    assert task in changed, changed or output[-4000:]
