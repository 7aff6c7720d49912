"""Switching the queue mode of a live server: hold, status, move, dispatch-held.

Against the real loopback SMTP server and, for rq and celery, the private
redis-server of conftest.py: the promise is "nobody is lost, nobody gets two
messages", which only the server side can count.
"""
import json
import time
from datetime import timedelta
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from polling import wait_for

from bulk_email import dispatch as dispatching
from bulk_email import modes
from bulk_email import switch
from bulk_email.campaigns import create_campaign
from bulk_email.models import Campaign, Delivery

HELD_LINE = "held: the queue mode is switching to {}; sent when the switch completes"


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().splitlines()


def last_json(*args: str) -> dict:
    return json.loads(run(*args, "--json")[-1])


def addresses(n: int, prefix: str = "student") -> list[str]:
    return [f"{prefix}{i:03d}@school.test" for i in range(1, n + 1)]


def send(recipients: list[str], *extra: str) -> list[str]:
    to = [arg for address in recipients for arg in ("--to", address)]
    return run("send_campaign", "--subject", "Hi", "--body", "x", *to, *extra)


class Hold:
    """The hold file the deployment writes during a switch (BULK_EMAIL_HOLD_FILE points at it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, content: str) -> None:
        self.path.write_text(content, encoding="utf-8")

    def remove(self) -> None:
        self.path.unlink()


@pytest.fixture
def hold(settings, tmp_path) -> Hold:
    settings.BULK_EMAIL_HOLD_FILE = str(tmp_path / "queue-switch")
    return Hold(tmp_path / "queue-switch")


@pytest.fixture
def fast(smtp, settings):
    """SMTP server plus no delay, since the commands use the real time.sleep."""
    settings.BULK_EMAIL_BATCH_DELAY = 0
    return smtp


def ledger_campaign(mode: str, n: int, *, sent: int = 0, claimed: int = 0, dispatched: bool = True) -> Campaign:
    """A campaign of ``mode`` as a sender left it: ``sent`` rows sent, ``claimed`` pending rows claimed."""
    campaign = create_campaign("Hi", "Body", addresses(n, prefix=f"{mode}{Campaign.objects.count()}-"))
    ids = list(campaign.deliveries.order_by("pk").values_list("pk", flat=True))
    now = timezone.now()
    Delivery.objects.filter(pk__in=ids[:sent]).update(  # sent a while ago, by a sender now gone
        status=Delivery.Status.SENT, sent_at=now - timedelta(hours=1), attempts=1, claimed_by="old-sender"
    )
    Delivery.objects.filter(pk__in=ids[sent : sent + claimed]).update(claimed_by="old-sender", claimed_at=now)
    Campaign.objects.filter(pk=campaign.pk).update(mode=mode, dispatched_at=now if dispatched else None)
    return Campaign.objects.get(pk=campaign.pk)


@pytest.mark.django_db
def test_a_campaign_created_during_a_switch_is_held_in_the_new_mode_and_nothing_is_sent(
    fast, hold, redis_server
):
    hold.write("rq\n")

    lines = send(addresses(3), "--json")

    campaign = Campaign.objects.get(pk=lines[0].removeprefix("campaign "))
    assert lines[1:3] == ["mode=rq recipients=3 sent=0 failed=0 pending=3", HELD_LINE.format("rq")]
    assert json.loads(lines[-1]) == {
        "id": str(campaign.id), "mode": "rq", "recipients": 3, "sent": 0, "failed": 0, "pending": 3,
        "held": True,
    }
    assert fast.ehlo_count == 0 and fast.messages == []
    assert (campaign.mode, campaign.dispatched_at) == ("rq", None)
    assert last_json("campaign_status", str(campaign.id))["dispatched"] is False


@pytest.mark.django_db
def test_dispatch_held_refuses_while_the_hold_file_is_there(fast, hold):
    hold.write("batch")
    send(addresses(2))

    with pytest.raises(CommandError, match="still switching to batch .*remove the hold file first"):
        run("queue_switch", "dispatch-held")

    assert fast.messages == []
    assert switch.held_campaigns().count() == 1


@pytest.mark.django_db
def test_dispatch_held_sends_every_held_recipient_exactly_once_in_the_current_mode(fast, hold, settings):
    settings.BULK_EMAIL_BATCH_SIZE = 10
    before = send(addresses(2, prefix="before"))  # dispatched (and sent) before the switch began
    hold.write("rq")  # the drain timed out: the held campaigns go out in the old mode, batch
    first, second = addresses(25, prefix="first"), addresses(4, prefix="second")
    held = [send(first)[0], send(second)[0]]
    assert fast.received() == {address: 1 for address in addresses(2, prefix="before")}
    hold.remove()

    lines = run("queue_switch", "dispatch-held", "--json")

    assert lines[0] == "dispatched 2 held campaigns (29 pending deliveries) in mode batch"
    assert json.loads(lines[-1]) == {"campaigns": 2, "pending": 29, "mode": "batch", "stopped": None}
    # Handed to the batch sender, not sent inside the playbook's command; the drain still counts them.
    assert sum(fast.received().values()) == 2
    assert last_json("queue_switch", "status", "--from-mode", "batch")["pending"] == 29
    run("batch_sender")
    assert fast.received() == {address: 1 for address in addresses(2, prefix="before") + first + second}
    for line in held:
        campaign = Campaign.objects.get(pk=line.removeprefix("campaign "))
        assert campaign.mode == "batch" and campaign.dispatched_at is not None
    assert Campaign.objects.get(pk=before[0].removeprefix("campaign ")).dispatched_at is not None
    assert run("queue_switch", "dispatch-held") == ["nothing held"]
    assert sum(fast.received().values()) == 31  # the second call sent nobody again
    after = send(["late@school.test"], "--json")  # hold file gone: campaigns go out at once
    assert json.loads(after[-1])["held"] is False and fast.received()["late@school.test"] == 1


@pytest.mark.django_db
def test_a_resumed_campaign_is_held_too_and_leaves_the_old_modes_count(fast, hold, settings):
    settings.BULK_EMAIL_DAILY_QUOTA = 1
    campaign_id = send(["a@x.test", "b@x.test"])[0].removeprefix("campaign ")
    settings.BULK_EMAIL_DAILY_QUOTA = 0
    hold.write("celery")

    lines = run("send_campaign", "--resume", campaign_id, "--json")

    assert lines[1:3] == ["mode=celery recipients=2 sent=1 failed=0 pending=1", HELD_LINE.format("celery")]
    assert fast.received() == {"a@x.test": 1}
    assert last_json("queue_switch", "status", "--from-mode", "batch") == {
        "mode": "batch", "campaigns": 0, "pending": 0, "sending": 0, "held": 1,
    }
    hold.remove()
    assert last_json("queue_switch", "dispatch-held")["pending"] == 1
    Delivery.objects.filter(status="sent").update(sent_at=timezone.now() - timedelta(minutes=1))
    run("batch_sender")  # its next pass (the send above ended a minute ago)
    assert fast.received() == {"a@x.test": 1, "b@x.test": 1}


@pytest.mark.django_db
def test_a_batch_send_is_dispatched_before_it_starts_so_an_interrupted_one_is_not_held(
    fast, monkeypatch
):
    def interrupted(campaign: Campaign, sleep: Callable) -> None:
        raise KeyboardInterrupt  # the operator's Ctrl-C, or a kill, in the middle of the send

    monkeypatch.setattr(modes.get("batch"), "send_now", interrupted)
    campaign = create_campaign("Hi", "Body", addresses(3))

    with pytest.raises(KeyboardInterrupt):
        dispatching.dispatch(campaign, wait=True)

    assert Campaign.objects.get(pk=campaign.pk).dispatched_at is not None
    assert switch.held_campaigns().count() == 0  # its rest is for --resume/retry_failed


@pytest.mark.django_db
def test_status_counts_what_a_mode_still_holds_from_the_ledger(fast):
    ledger_campaign("rq", 3, sent=3)  # done
    ledger_campaign("rq", 3, sent=1, claimed=1)  # 2 pending, 1 of them being sent
    ledger_campaign("rq", 1)
    ledger_campaign("batch", 2)
    ledger_campaign("celery", 2, dispatched=False)  # held
    ledger_campaign("celery", 1, sent=1, dispatched=False)  # nothing left: not held

    lines = run("queue_switch", "status", "--from-mode", "rq", "--json")

    assert lines[0] == "mode=rq campaigns=2 pending=3 sending=1 held=1"
    assert json.loads(lines[-1]) == {"mode": "rq", "campaigns": 2, "pending": 3, "sending": 1, "held": 1}
    assert last_json("queue_switch", "status", "--from-mode", "celery") == {
        "mode": "celery", "campaigns": 1, "pending": 2, "sending": 0, "held": 1,
    }


@pytest.mark.django_db
def test_move_reassigns_only_the_unfinished_campaigns_of_the_old_mode(fast):
    done = ledger_campaign("rq", 2, sent=2)
    unfinished = ledger_campaign("rq", 3, sent=1, claimed=1)
    other = ledger_campaign("batch", 2)
    sent_row = unfinished.deliveries.get(status="sent")

    lines = run("queue_switch", "move", "--from-mode", "rq", "--to-mode", "batch", "--json")

    assert lines[0] == "moved 1 campaigns (2 pending deliveries) from rq to batch"
    assert json.loads(lines[-1]) == {"campaigns": 1, "pending": 2, "released": 0}
    done.refresh_from_db()
    unfinished.refresh_from_db()
    other.refresh_from_db()
    assert (done.mode, done.dispatched_at is not None) == ("rq", True)
    assert (unfinished.mode, unfinished.dispatched_at) == ("batch", None)
    assert (other.mode, other.dispatched_at is not None) == ("batch", True)
    after = Delivery.objects.get(pk=sent_row.pk)
    assert (after.status, after.sent_at, after.claimed_by) == ("sent", sent_row.sent_at, "old-sender")
    assert unfinished.sending() == 1  # claims kept without --release-claims
    assert fast.messages == []  # moving sends nothing


@pytest.mark.django_db
def test_move_with_release_claims_frees_the_pending_rows_and_dispatch_held_sends_them_once(fast):
    done = ledger_campaign("celery", 2, sent=2)
    unfinished = ledger_campaign("celery", 4, sent=1, claimed=2)

    summary = last_json(
        "queue_switch", "move", "--from-mode", "celery", "--to-mode", "batch", "--release-claims"
    )

    assert summary == {"campaigns": 1, "pending": 3, "released": 2}
    pending = unfinished.deliveries.filter(status="pending")
    assert set(pending.values_list("claimed_by", "claimed_at")) == {("", None)}
    assert unfinished.deliveries.get(status="sent").claimed_by == "old-sender"
    unsent = list(pending.values_list("recipient", flat=True))

    assert last_json("queue_switch", "dispatch-held") == {
        "campaigns": 1, "pending": 3, "mode": "batch", "stopped": None,
    }
    assert fast.messages == []
    run("batch_sender")
    assert fast.received() == {address: 1 for address in unsent}  # not the sent one, not `done`
    assert done.counts() == {"pending": 0, "sent": 2, "failed": 0}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-mode", "rq", "--to-mode", "rq"], "both 'rq': nothing to move"),
        (["--from-mode", "kafka", "--to-mode", "rq"], "invalid choice: 'kafka'"),
        (["--from-mode", "rq", "--to-mode", "sqs"], "invalid choice: 'sqs'"),
    ],
)
def test_move_refuses_the_same_or_an_unknown_mode(args, message):
    ledger_campaign("rq", 2)
    with pytest.raises(CommandError, match=message):
        run("queue_switch", "move", *args)
    assert Campaign.objects.get().mode == "rq"


def test_the_switch_functions_refuse_unknown_modes_themselves():
    with pytest.raises(ValueError, match="unknown queue mode 'kafka'"):
        switch.move("kafka", "rq")
    with pytest.raises(ValueError, match="unknown queue mode 'kafka'"):
        switch.status("kafka")


@pytest.mark.django_db
@pytest.mark.parametrize("content", ["kafka", "", "RQ"])
def test_an_unknown_mode_in_the_hold_file_is_a_clear_error_and_nothing_is_created(fast, hold, content):
    hold.write(content)

    with pytest.raises(ImproperlyConfigured, match=rf"hold file .* must contain one of batch, rq, celery, got '{content}'"):
        send(["a@x.test"])

    assert Campaign.objects.count() == 0 and fast.messages == []
    with pytest.raises(ImproperlyConfigured, match="must contain one of"):
        run("queue_switch", "dispatch-held")


def test_held_mode_is_off_without_the_setting_or_the_file(settings, tmp_path):
    (tmp_path / "queue-switch").write_text("rq")
    settings.BULK_EMAIL_HOLD_FILE = ""
    assert switch.held_mode() is None
    settings.BULK_EMAIL_HOLD_FILE = str(tmp_path / "absent")
    assert switch.held_mode() is None
    settings.BULK_EMAIL_HOLD_FILE = str(tmp_path / "queue-switch")
    assert switch.held_mode() == "rq"


@pytest.mark.django_db(transaction=True)
def test_the_migration_marks_existing_campaigns_dispatched():
    executor = MigrationExecutor(connection)
    before, after = [("bulk_email", "0002_delivery_claim")], [("bulk_email", "0003_campaign_dispatched_at")]
    try:
        executor.migrate(before)
        old_apps = executor.loader.project_state(before).apps
        old = old_apps.get_model("bulk_email", "Campaign").objects.create(
            subject="Hi", body="x", from_email="office@school.test", mode="rq"
        )
        executor.loader.build_graph()
        executor.migrate(after)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes("bulk_email"))

    campaign = Campaign.objects.get(pk=old.pk)
    assert campaign.dispatched_at == campaign.created_at
    assert switch.held_campaigns().count() == 0


@pytest.mark.django_db
def test_rq_dispatch_held_enqueues_the_held_campaign_and_the_jobs_send_it_once(
    rq_mode, smtp, hold, django_capture_on_commit_callbacks
):
    from rq import SimpleWorker

    hold.write("rq")  # batch -> rq: this process already runs the new mode
    recipients = addresses(45)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_id = send(recipients)[0].removeprefix("campaign ")
    assert rq_mode.count == 0 and smtp.messages == []
    hold.remove()

    with django_capture_on_commit_callbacks(execute=True):
        summary = last_json("queue_switch", "dispatch-held")

    assert summary == {"campaigns": 1, "pending": 45, "mode": "rq", "stopped": None}
    assert rq_mode.count == 3 and smtp.messages == []  # enqueued, not sent in this process
    assert Campaign.objects.get(pk=campaign_id).dispatched_at is not None
    SimpleWorker([rq_mode], connection=rq_mode.connection).work(burst=True)
    assert smtp.received() == {address: 1 for address in recipients}


@pytest.mark.django_db
def test_rq_a_failed_enqueue_stays_held_for_dispatch_held(rq_mode, smtp, monkeypatch, django_capture_on_commit_callbacks):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from bulk_email import rq_jobs

    def redis_down(*args, **kwargs):
        raise RedisConnectionError("Connection refused")

    campaign = create_campaign("Hi", "Body", addresses(3))
    with monkeypatch.context() as patch:
        patch.setattr(rq_jobs, "enqueue_batch", redis_down)
        with pytest.raises(RedisConnectionError):
            dispatching.dispatch(campaign)
    assert Campaign.objects.get(pk=campaign.pk).dispatched_at is None

    with django_capture_on_commit_callbacks(execute=True):
        assert last_json("queue_switch", "dispatch-held")["campaigns"] == 1
    assert rq_mode.count == 1


@pytest.mark.queue_mode("celery")
@pytest.mark.django_db(transaction=True)
def test_celery_dispatch_held_enqueues_the_held_campaign_and_the_worker_sends_it_once(
    celery_worker, smtp, hold
):
    hold.write("celery")  # rq -> celery, this process already deployed as celery
    recipients = addresses(30)
    campaign_id = send(recipients)[0].removeprefix("campaign ")
    time.sleep(1)  # a worker that had been handed a task would have sent something by now
    assert smtp.messages == []
    hold.remove()

    summary = last_json("queue_switch", "dispatch-held")

    assert summary == {"campaigns": 1, "pending": 30, "mode": "celery", "stopped": None}
    campaign = Campaign.objects.get(pk=campaign_id)
    assert campaign.dispatched_at is not None
    wait_for(lambda: campaign.counts()["pending"] == 0)
    assert smtp.received() == {address: 1 for address in recipients}


def test_queue_switch_through_manage_py_as_the_deployment_runs_it(smtp_server, tmp_path):
    """Separate processes configured from the environment, real exit codes (batch-mode copy)."""
    import os
    import subprocess
    import sys

    from edupulse_testproject import build_patched_project

    project = build_patched_project(tmp_path, mode="batch")
    hold_file = tmp_path / "queue-switch"
    env = {
        **os.environ, "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "PYTHONPATH": "",
        "EMAIL_PORT": str(smtp_server.port), "BULK_EMAIL_BATCH_DELAY": "0",
        "BULK_EMAIL_QUEUE_MODE": "batch", "BULK_EMAIL_HOLD_FILE": str(hold_file),
    }

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=project, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert manage("migrate", "-v0").returncode == 0
    hold_file.write_text("batch\n")
    held = manage("send_campaign", "--subject", "Hi", "--body", "x", "--to", "a@x.test", "--json")
    assert held.returncode == 0 and json.loads(held.stdout.splitlines()[-1])["held"] is True
    status = manage("queue_switch", "status", "--from-mode", "batch", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout.splitlines()[-1]) == {
        "mode": "batch", "campaigns": 1, "pending": 1, "sending": 0, "held": 1,
    }
    refused = manage("queue_switch", "dispatch-held", "--json")
    assert refused.returncode == 1 and "remove the hold file first" in refused.stderr
    same = manage("queue_switch", "move", "--from-mode", "rq", "--to-mode", "rq")
    assert same.returncode == 1 and "nothing to move" in same.stderr
    hold_file.unlink()
    sent = manage("queue_switch", "dispatch-held", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout.splitlines()[-1])["campaigns"] == 1
    assert smtp_server.messages == []  # handed to the batch sender
    sender = manage("batch_sender")
    assert sender.returncode == 0, sender.stderr
    assert smtp_server.received() == {"a@x.test": 1}


@pytest.mark.django_db
def test_a_campaign_held_for_celery_is_created_by_a_deployment_without_celery(fast, hold, settings, monkeypatch):
    """During a switch from rq (or batch) to celery the old mode's processes create the held
    campaigns: they have neither Celery installed nor its settings, so the celery-only checks
    wait for the enqueue in the new mode instead of failing the submit."""
    import sys

    settings.BULK_EMAIL_QUEUE_MODE = "rq"
    monkeypatch.setitem(sys.modules, "bulk_email.tasks", None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "celery", None)
    hold.write("celery\n")

    campaign = create_campaign("Held", "x", [f"s{i}@x.test" for i in range(100)])

    assert (campaign.mode, campaign.dispatched_at) == ("celery", None)
    assert campaign.deliveries.count() == 100
