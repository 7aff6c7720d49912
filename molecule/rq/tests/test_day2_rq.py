"""Day-2 playbooks of rq mode, run for real: Redis backup and restore, retry_failed.

Backup and restore: known data (a marker key, and a campaign's job waiting in the queue while
the workers are stopped) is backed up, then lost (FLUSHALL); a restore without a file or with a
missing or broken one refuses and leaves Redis alone; the real restore brings both back with AOF
on again, and the workers then deliver the campaign exactly once.

retry_failed: a job fails for real (the SMTP sink answers 421 until the job has no retry left;
its retry budget is cut to zero first, so the test does not wait the ~21 minutes of the real
intervals); the dry run shows it and changes nothing, the real run puts it back and the
recipient gets exactly one message.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from day2_helpers import assert_ok_and_unchanged, assert_refused, flat, recap, run_playbook
from e2e_helpers import (
    acl_log_entries,
    assert_delivered_exactly_once,
    campaign_status,
    clear_sink_fault,
    redis_run_id,
    set_sink_fault,
    sink_counts,
    start_campaign,
    wait_for,
)

DATA_DIR = "/var/lib/redis"
DROP_IN = "/run/systemd/system/redis-server.service.d/restore.conf"


def admin(host, *args: str) -> str:
    return host.check_output("redis-admin-cli --no-raw " + " ".join(args)).strip().strip('"')


def campaign_jobs_in_queue(host, campaign_id: str) -> list[str]:
    ids = host.check_output("redis-admin-cli LRANGE rq:queue:email 0 -1").split()
    return [job for job in ids if job.startswith(f"bulk_email-{campaign_id}-")]


@contextmanager
def workers_stopped(host) -> Iterator[None]:
    """The rq workers stopped (jobs stay in Redis), and started again whatever happens."""
    units = host.check_output("systemctl list-units --plain --no-legend 'edupulse-rqworker@*' | awk '{print $1}'").split()
    assert units, "no rq worker units"
    host.run_expect([0], f"systemctl stop {' '.join(units)}")
    try:
        yield
    finally:
        host.run_expect([0], f"systemctl start {' '.join(units)}")


def test_backup_and_restore_bring_back_the_data_with_aof_on(host):
    marker = uuid.uuid4().hex
    aside: set[str] = set()
    aside_before = set(host.run(f"ls -d {DATA_DIR}/*.before-restore-*").stdout.split())
    with workers_stopped(host):
        admin(host, "SET", "day2:restore-marker", marker)
        campaign = start_campaign(host, 20, subject="Queued before the backup")  # one job, waiting
        job = campaign_jobs_in_queue(host, campaign)
        assert len(job) == 1, job

        backup = run_playbook(host, "redis_backup.yml")
        assert backup.returncode == 0 and recap(backup.stdout, host)["changed"] >= 1, backup.stdout[-3000:]
        saved = re.search(r"saved: (/var/backups/redis/dump-\d{8}-\d{6}\.rdb)", backup.stdout)
        assert saved, backup.stdout[-3000:]
        dump = host.file(saved.group(1))
        assert dump.is_file and dump.user == "root" and dump.mode == 0o600

        # The data is lost, and something is written that the backup does not have.
        admin(host, "FLUSHALL")
        admin(host, "SET", "day2:after-backup", "x")
        assert campaign_jobs_in_queue(host, campaign) == []
        run_id = redis_run_id(host)

        assert_refused(run_playbook(host, "redis_restore.yml"), "Name the dump to restore: -e redis_restore_file=")
        missing = run_playbook(host, "redis_restore.yml", "redis_restore_file=dump-19700101-000000.rdb")
        assert_refused(missing, "redis_restore_file /var/backups/redis/dump-19700101-000000.rdb does not exist")
        assert saved.group(1) in flat(missing.stdout)  # the dumps there are listed
        host.run_expect([0], "head -c 100 /dev/urandom > /tmp/not-a-dump.rdb")
        broken = run_playbook(host, "redis_restore.yml", "redis_restore_file=/tmp/not-a-dump.rdb")
        assert_refused(broken, "/tmp/not-a-dump.rdb is not a valid RDB file")
        # Refused before anything changed: the same Redis process, with the same data.
        assert redis_run_id(host) == run_id
        assert admin(host, "GET", "day2:after-backup") == "x"

        # The restore restarts Redis, which clears ACL LOG: nothing so far was denied.
        assert acl_log_entries(host) == []
        restore = run_playbook(host, "redis_restore.yml", f"redis_restore_file={saved.group(1).rsplit('/', 1)[1]}")

        assert restore.returncode == 0, restore.stdout[-4000:]
        assert f"restored {saved.group(1)}: " in flat(restore.stdout)
        assert redis_run_id(host) != run_id
        assert admin(host, "GET", "day2:restore-marker") == marker
        assert admin(host, "EXISTS", "day2:after-backup") == "(integer) 0"
        assert campaign_jobs_in_queue(host, campaign) == job
        persistence = host.check_output("redis-admin-cli INFO persistence")
        assert "aof_enabled:1" in persistence and "aof_last_bgrewrite_status:ok" in persistence, persistence
        assert host.check_output("redis-admin-cli CONFIG GET appendonly").split() == ["appendonly", "yes"]
        assert not host.file(DROP_IN).exists
        assert "restore.conf" not in host.check_output("systemctl show -p DropInPaths --value redis-server")
        assert host.file(f"{DATA_DIR}/appendonlydir").is_directory
        aside = set(host.check_output(f"ls -d {DATA_DIR}/*.before-restore-*").split()) - aside_before
        assert len(aside) == 2, aside  # the previous AOF directory and dump, kept
        assert host.service("redis-server").is_running
    try:
        # The restored job is sent by the workers, to each recipient once.
        assert_delivered_exactly_once(host, campaign, 20)
    finally:
        admin(host, "DEL", "day2:restore-marker")
        host.run(f"rm -rf {' '.join(aside)} /tmp/not-a-dump.rdb")


def test_retry_failed_dry_run_changes_nothing_and_the_real_run_delivers_once(host):
    with workers_stopped(host):
        campaign = start_campaign(host, 1, subject="Fails until retried")
        (job,) = campaign_jobs_in_queue(host, campaign)
        admin(host, "HSET", f"rq:job:{job}", "retries_left", "0")  # its retries are used up
        set_sink_fault(host, "421")
    try:
        # 5 attempts with backoff (about 30 s), then the job fails for good.
        assert wait_for(lambda: campaign_status(host, campaign)["failed_jobs"] == 1, timeout=240, interval=2), \
            campaign_status(host, campaign)
    finally:
        clear_sink_fault(host)
    assert campaign_status(host, campaign)["pending"] == 1

    refused = run_playbook(host, "retry_failed.yml", "retry_failed_dry_run=maybe")
    assert_refused(refused, "retry_failed_dry_run must be true")
    dry = run_playbook(host, "retry_failed.yml")
    checked = run_playbook(host, "retry_failed.yml", "retry_failed_dry_run=false", check=True)

    assert_ok_and_unchanged(dry, host)
    assert "rq mode, dry run (-e retry_failed_dry_run=false retries): 1 failed job(s) in the rq failed registry; would retry them." \
        in flat(dry.stdout), dry.stdout[-3000:]
    assert_ok_and_unchanged(checked, host)  # check mode never retries
    status = campaign_status(host, campaign)
    assert (status["failed_jobs"], status["pending"], sink_counts(host, campaign)["messages"]) == (1, 1, 0), status

    real = run_playbook(host, "retry_failed.yml", "retry_failed_dry_run=false")

    assert real.returncode == 0 and recap(real.stdout, host)["changed"] == 1, real.stdout[-3000:]
    assert "rq mode: 1 failed job(s) in the rq failed registry; retried 1." in flat(real.stdout), real.stdout[-3000:]
    assert_delivered_exactly_once(host, campaign, 1)
    assert campaign_status(host, campaign)["failed_jobs"] == 0
    again = run_playbook(host, "retry_failed.yml", "retry_failed_dry_run=false")
    assert_ok_and_unchanged(again, host)
    assert "rq mode: 0 failed job(s) in the rq failed registry." in flat(again.stdout)
