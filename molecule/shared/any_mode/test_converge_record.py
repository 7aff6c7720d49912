"""A re-run skips a role's converge only while the host is as the role's last full run left it.

The roles nginx, redis, edupulse_app, smtp_sink and the worker roles compare the host with their
record first (library/edupulse_converged in roles/edupulse) and skip their converge tasks as a
whole when it matches. Molecule's idempotence step and check_mode/test_check_mode.py run with
edupulse_full_converge (.config/molecule/config.yml), so every task's second run is still proven
to change nothing. Here, with edupulse_full_converge=false as a user runs it: on the converged
host the roles skip their converge, and a hand edit of a file the record holds, a file removed
and units stopped (the sink, the batch sender's timer) each make their role converge again,
which `--check` reports as the changes a real run would make. Mode-independent but for
batch_sender, so it runs in batch only (molecule/shared/any_mode), on both of its hosts; each
host's `--check` runs are limited to it, and the host is put back as it was. The rq and celery
worker roles: molecule/shared/workers.
"""

from __future__ import annotations

import functools

from e2e_helpers import changed_tasks, check_run_without_full_converge, play_recap, skipped_converges

SITE = "/etc/nginx/sites-available/edupulse.conf"
MANAGE = "/usr/local/bin/edupulse-manage"
TIMER = "edupulse-batch-sender.timer"


def test_the_converged_host_skips_each_recorded_roles_converge(host):
    output, name = check_run_without_full_converge(host)
    converges = skipped_converges(output, name)
    assert converges == {"nginx": True, "edupulse_app": True, "smtp_sink": True, "batch_sender": True}, converges
    counters = play_recap(output, name)
    assert counters["changed"] == 0, "\n".join(changed_tasks(output)) or output[-4000:]


@functools.cache
def drifted_check_run(host) -> tuple[str, str]:
    """`--check` on the host with four drifts, then the host restored; (output, hostname)."""
    host.check_output(f"cp -p {SITE} /root/site.saved && cp -p {MANAGE} /root/manage.saved")
    try:
        host.check_output(f"echo '# a hand edit' >> {SITE} && rm {MANAGE} && systemctl stop smtp-sink {TIMER}")
        return check_run_without_full_converge(host)
    finally:
        host.check_output(f"cp -p /root/site.saved {SITE} && cp -p /root/manage.saved {MANAGE}"
                          f" && systemctl start smtp-sink {TIMER} && rm /root/site.saved /root/manage.saved")


def test_each_drift_makes_its_role_converge_again(host):
    output, name = drifted_check_run(host)
    converges = skipped_converges(output, name)
    assert converges.get("nginx") is False and converges.get("edupulse_app") is False, converges
    assert converges.get("smtp_sink") is False and converges.get("batch_sender") is False, converges


def test_the_converge_finds_what_drifted(host):
    output, name = drifted_check_run(host)
    changed = "\n".join(line for line in changed_tasks(output) if f"[{name}]" in line)
    assert "nginx : Render the EduPulse site" in changed, changed or output[-4000:]
    assert "edupulse_app : Install the manage wrapper" in changed, changed or output[-4000:]
    assert "smtp_sink : Enable and start the sink" in changed, changed or output[-4000:]
    assert "batch_sender : Enable and start the path and timer units" in changed, changed or output[-4000:]
