"""queue_status: the day-2 overview (playbooks/status.yml), and that reading it changes nothing."""
import json
from io import StringIO

import pytest
from django.core.management import call_command
from rq import SimpleWorker
from rq.registry import StartedJobRegistry

from bulk_email.campaigns import create_campaign
from bulk_email.dispatch import dispatch

pytestmark = pytest.mark.django_db


def addresses(n: int) -> list[str]:
    return [f"student{i:03d}@school.test" for i in range(1, n + 1)]


def status(*args: str) -> list[str]:
    out = StringIO()
    call_command("queue_status", *args, stdout=out)
    return out.getvalue().splitlines()


def report() -> dict:
    (line,) = status("--json")
    return json.loads(line)


def test_batch_mode_reports_the_ledger_only(smtp, settings):
    settings.BULK_EMAIL_BATCH_DELAY = 0
    settings.BULK_EMAIL_DAILY_QUOTA = 1000
    assert report()["ledger"]["last_sent_at"] is None  # nothing sent yet: "never", not an error
    smtp.rejected = {"bad@school.test": "550 5.1.1 unknown"}
    dispatch(create_campaign("Hi", "Body", ["ok@school.test", "bad@school.test"]), wait=True)

    result = report()

    assert result["mode"] == "batch" and result["errors"] == []
    assert "rq" not in result and "celery" not in result
    ledger = result["ledger"]
    assert {key: ledger[key] for key in ("campaigns", "sent", "failed", "pending", "sending", "held")} == {
        "campaigns": 1, "sent": 1, "failed": 1, "pending": 0, "sending": 0, "held": 0,
    }
    assert (ledger["sent_last_24h"], ledger["daily_quota"]) == (1, 1000)
    assert ledger["last_sent_at"] is not None and ledger["oldest_pending_at"] is None
    lines = status()
    assert lines[0] == "mode=batch"
    assert lines[1].startswith("ledger campaigns=1 sent=1 failed=1 pending=0 sending=0 held=0 ")
    assert "oldest_pending_at=none" in lines[1] and len(lines) == 2


def test_rq_mode_counts_queues_registries_and_workers(rq_mode, smtp, django_capture_on_commit_callbacks):
    campaign = create_campaign("Hi", "Body", addresses(45))
    with django_capture_on_commit_callbacks(execute=True):
        dispatch(campaign)

    waiting = report()

    assert waiting["rq"]["queues"]["email"] == {
        "queued": 3, "scheduled": 0, "started": 0, "failed": 0, "deferred": 0, "finished": 0,
    }
    assert waiting["rq"]["workers"] == []
    assert waiting["ledger"]["pending"] == 45 and waiting["ledger"]["oldest_pending_at"] is not None
    assert "rq queue=email queued=3 scheduled=0 started=0 failed=0 deferred=0 finished=0" in status()

    SimpleWorker([rq_mode], connection=rq_mode.connection).work(burst=True)
    done = report()

    assert done["rq"]["queues"]["email"]["queued"] == 0
    assert done["rq"]["queues"]["email"]["finished"] == 3
    assert done["ledger"]["sent"] == 45 and done["ledger"]["last_sent_at"] is not None


def test_rq_mode_reports_live_workers_and_leaves_what_it_reads_alone(rq_mode):
    """RQ's own counters clean up while they read; a status probe must not (check mode, cron)."""
    connection = rq_mode.connection
    worker = SimpleWorker([rq_mode], connection=connection, name="probe-worker")
    worker.register_birth()
    worker.set_state("idle")
    # What a killed worker leaves: its name in the queue's worker set, its key expired.
    connection.sadd("rq:workers:email", "rq:worker:dead-worker")
    connection.sadd("rq:workers", "rq:worker:dead-worker")
    # And a started job whose heartbeat expired long ago (rq_maintenance's work, not ours).
    started = StartedJobRegistry(queue=rq_mode)
    connection.zadd(started.key, {"bulk_email-x-1-abandoned:execution": 1})

    result = report()

    assert [(w["name"], w["state"], w["queues"]) for w in result["rq"]["workers"]] == [
        ("probe-worker", "idle", ["email"])
    ]
    assert result["rq"]["queues"]["email"]["started"] == 1
    assert "rq workers=1 busy=0 idle=1" in status()
    # Untouched: a cleanup would have moved the job to the failed registry and pruned the set.
    assert connection.zcard(started.key) == 1
    assert connection.sismember("rq:workers:email", "rq:worker:dead-worker")
    assert connection.sismember("rq:workers", "rq:worker:dead-worker")


def test_rq_mode_with_redis_down_still_reports_the_ledger(rq_mode, settings):
    create_campaign("Hi", "Body", addresses(2))
    unreachable = "redis://nobody:secret-password@127.0.0.1:1/0"
    settings.RQ_QUEUES = {name: {**queue, "URL": unreachable} for name, queue in settings.RQ_QUEUES.items()}

    result = report()

    assert result["ledger"]["pending"] == 2
    assert "rq" not in result
    ((error),) = result["errors"]
    assert error["part"] == "rq" and "ConnectionError" in error["error"]
    assert "secret-password" not in json.dumps(result)
    assert status()[-1].startswith("error rq: ")
