"""celery mode against a real redis-server broker and SMTP server on loopback.

Runs in the celery pytest run only (EDUPULSE_TEST_QUEUE_MODE=celery, see
app_patches/testing/edupulse_testproject.py): the test project is patched
with ``--mode celery``, so <package>/celery.py, django-celery-beat and
django-celery-results are what production runs. Tasks are executed by a
real worker (solo pool, in a thread) through the broker.
"""
import json
from collections.abc import Callable
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from polling import wait_for

from bulk_email.campaigns import create_campaign
from bulk_email.dispatch import dispatch
from bulk_email.models import Campaign
from bulk_email.tasks import QUEUE_HEALTH, SEND_BATCH, queue_health, send_batch_task, stranded_after

pytestmark = [pytest.mark.queue_mode("celery"), pytest.mark.django_db(transaction=True)]


def addresses(n: int) -> list[str]:
    return [f"student{i:03d}@school.test" for i in range(1, n + 1)]


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().splitlines()


def done(campaign: Campaign) -> Callable[[], bool]:
    return lambda: campaign.counts()["pending"] == 0


def test_the_project_is_wired_as_the_guide_says(celery_mode):
    from edupulse import celery_app

    assert celery_app is celery_mode
    conf = celery_mode.conf
    assert conf.timezone == "Australia/Perth"
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_routes["core.tasks.send_bulk_emails"] == {"queue": "email"}
    assert conf.task_routes["core.tasks.send_single_email"] == {"queue": "email"}
    assert conf.task_annotations["core.tasks.send_bulk_emails"] == {"rate_limit": "10/m"}
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (
        True, True, 1,
    )
    assert conf.result_backend == "django-db" and conf.result_expires == 7 * 86400
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > conf.task_time_limit + settings.BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX
    assert {SEND_BATCH, QUEUE_HEALTH} <= set(celery_mode.tasks)


def test_campaign_is_one_task_per_batch_and_everyone_gets_exactly_one_message(
    celery_worker, smtp
):
    recipients = addresses(95)
    campaign = create_campaign("Timetable", "Body", recipients)

    run_ = dispatch(campaign)

    assert run_.batches == 5  # ceil(95/20), returned before anything was sent
    wait_for(done(campaign))
    assert smtp.received() == {address: 1 for address in recipients}
    assert smtp.ehlo_count == 5  # one SMTP session per task
    wait_for(lambda: TaskResult.objects.filter(task_name=SEND_BATCH, status="SUCCESS").count() == 5)
    assert campaign.counts() == {"pending": 0, "sent": 95, "failed": 0}


def test_a_task_delivered_twice_sends_nothing_twice(celery_mode, smtp):
    recipients = addresses(5)
    campaign = create_campaign("Timetable", "Body", recipients)
    ids = list(campaign.deliveries.values_list("pk", flat=True))

    send_batch_task.apply(args=(str(campaign.id), ids, 1, 1), task_id="bulk_email-x-1-a")
    send_batch_task.apply(args=(str(campaign.id), ids, 1, 1), task_id="bulk_email-x-1-a")  # redelivery

    assert smtp.received() == {address: 1 for address in recipients}


def test_a_task_left_behind_by_a_mode_switch_sends_nothing(celery_mode, smtp):
    """queue_switch move hands a campaign to another mode; its old tasks then stand aside."""
    campaign = create_campaign("Timetable", "Body", addresses(5))
    ids = list(campaign.deliveries.values_list("pk", flat=True))
    Campaign.objects.filter(pk=campaign.pk).update(mode="rq")

    result = send_batch_task.apply(args=(str(campaign.id), ids, 1, 1), task_id="bulk_email-y-1-a")

    assert result.get() == {"sent": 0, "failed": 0, "skipped": "rq"}
    assert smtp.messages == []
    assert campaign.counts() == {"pending": 5, "sent": 0, "failed": 0}


def test_transient_errors_retry_the_task_and_everything_arrives(celery_worker, smtp, settings):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    smtp.mail_replies = ["421 4.7.0 Try again later"] * 3  # three deferred in a row: outage
    recipients = addresses(4)
    campaign = create_campaign("Timetable", "Body", recipients)

    dispatch(campaign)

    wait_for(done(campaign))
    assert smtp.received() == {address: 1 for address in recipients}
    (result,) = TaskResult.objects.filter(task_name=SEND_BATCH)
    wait_for(lambda: TaskResult.objects.get(pk=result.pk).status == "SUCCESS")


def test_permanent_rejection_is_recorded_and_not_retried(celery_worker, smtp):
    recipients = addresses(3)
    smtp.rejected = {recipients[1]: "550 5.1.1 No such user"}
    campaign = create_campaign("Timetable", "Body", recipients)

    dispatch(campaign)

    wait_for(done(campaign))
    assert smtp.rcpt_count[recipients[1]] == 1
    assert campaign.counts() == {"pending": 0, "sent": 2, "failed": 1}


def test_exhausted_task_keeps_its_deliveries_pending_and_retry_failed_delivers_them(
    celery_worker, smtp, settings
):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    settings.BULK_EMAIL_CELERY_MAX_RETRIES = 1
    smtp.mail_replies = ["421 4.3.2 Service shutting down"] * 6  # 2 runs x 3 recipients
    recipients = addresses(5)
    campaign = create_campaign("Timetable", "Body", recipients)
    dispatch(campaign)
    wait_for(lambda: TaskResult.objects.filter(task_name=SEND_BATCH, status="FAILURE").exists())
    assert campaign.counts() == {"pending": 5, "sent": 0, "failed": 0}  # never lost
    status = json.loads(run("campaign_status", str(campaign.id), "--json")[-1])
    assert status["failed_jobs"] == 1

    dry = run("retry_failed", "--dry-run", "--json")

    assert dry[0] == "would retry 1 failed tasks (5 pending deliveries)"
    assert json.loads(dry[-1]) == {
        "mode": "celery", "dry_run": True, "jobs": 1, "deliveries": 5, "retried": 0,
    }
    assert json.loads(run("retry_failed", "--json")[-1])["retried"] == 1
    wait_for(done(campaign))
    assert smtp.received() == {address: 1 for address in recipients}
    assert run("retry_failed") == ["nothing to retry"]


def test_a_recipient_held_by_a_crashed_hosts_claim_is_sent_once_it_expires_whatever_the_retry_budget(
    celery_worker, smtp, settings
):
    """A worker host died mid-batch: its claim blocks the recipient until the claim timeout, which
    is far longer than the retries (the scenarios: 240 s against about 100 s of backoff). Waiting
    for another runner's claim must not use the retry budget up, or the batch ends in FAILURE
    with the recipient pending and nothing sends it (the cluster scenario saw 297 of 300)."""
    settings.BULK_EMAIL_CELERY_MAX_RETRIES = 1
    settings.BULK_EMAIL_CELERY_RETRY_BACKOFF = 1
    settings.BULK_EMAIL_CELERY_RETRY_BACKOFF_MAX = 1
    settings.BULK_EMAIL_CLAIM_TIMEOUT = 4
    recipients = addresses(3)
    campaign = create_campaign("Timetable", "Body", recipients)
    held = campaign.deliveries.order_by("pk").first()
    # Another host's sender (another machine identity: never taken over before it expires).
    campaign.deliveries.filter(pk=held.pk).update(claimed_by="celery:crashed-host#0:1:x", claimed_at=timezone.now())
    dispatch(campaign)

    wait_for(done(campaign), timeout=30)

    assert campaign.counts() == {"pending": 0, "sent": 3, "failed": 0}
    assert smtp.received() == {address: 1 for address in recipients}
    assert not TaskResult.objects.filter(task_name=SEND_BATCH, status="FAILURE").exists()


def test_send_campaign_returns_at_once_and_status_shows_the_tasks(celery_worker, smtp):
    to = [arg for address in addresses(45) for arg in ("--to", address)]

    summary = json.loads(run("send_campaign", "--subject", "Hi", "--body", "x", *to, "--json")[-1])

    assert summary["mode"] == "celery" and summary["recipients"] == 45
    campaign = Campaign.objects.get(pk=summary["id"])
    wait_for(done(campaign))
    wait_for(lambda: TaskResult.objects.filter(status="SUCCESS", task_name=SEND_BATCH).count() == 3)
    assert run("campaign_status", summary["id"]) == [
        f"campaign {summary['id']} mode=celery recipients=45 sent=45 failed=0 pending=0 sending=0 "
        "started=0 retrying=0 failed_jobs=0"
    ]


def test_batches_are_spaced_by_countdown(celery_mode, settings, monkeypatch):
    settings.BULK_EMAIL_BATCH_DELAY = 0.5
    sent: list[dict] = []
    monkeypatch.setattr(send_batch_task, "apply_async", lambda **options: sent.append(options))

    dispatch(create_campaign("Timetable", "Body", addresses(50)))

    assert [options["countdown"] for options in sent] == [None, 0.5, 1.0]
    assert {options["queue"] for options in sent} == {"email"}
    assert all(options["task_id"].startswith("bulk_email-") for options in sent)


def test_a_campaign_spaced_past_the_visibility_timeout_is_refused_before_any_row_is_written(
    celery_mode, settings, monkeypatch
):
    """Refused by create_campaign: a campaign written first and refused at enqueue would sit in
    the ledger, pending, and make every periodic recovery fail on it."""
    settings.BULK_EMAIL_BATCH_DELAY = 60
    settings.BULK_EMAIL_BATCH_SIZE = 1
    sent: list[dict] = []
    monkeypatch.setattr(send_batch_task, "apply_async", lambda **options: sent.append(options))

    with pytest.raises(ValueError, match="visibility timeout"):
        create_campaign("Timetable", "Body", addresses(60))  # 59 min of countdowns

    assert sent == []
    assert not Campaign.objects.exists()


def test_recovery_goes_on_past_a_campaign_it_cannot_enqueue(celery_mode, settings, monkeypatch):
    """A stranded campaign that no longer fits the spacing (written before the check, or the
    settings changed) is logged and skipped; the others are still recovered."""
    sent: list[dict] = []
    monkeypatch.setattr(send_batch_task, "apply_async", lambda **options: sent.append(options))
    settings.BULK_EMAIL_BATCH_SIZE = 1
    too_big = create_campaign("Big", "Body", addresses(60))
    fine = create_campaign("Small", "Body", ["x@school.test"])
    settings.BULK_EMAIL_BATCH_DELAY = 60  # now 60 batches would wait 59 minutes
    later = timezone.now() + stranded_after() + timedelta(seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    report = queue_health.apply().get()

    assert report["recovered"] == 1
    assert [options["args"][0] for options in sent] == [str(fine.id)]
    assert too_big.counts()["pending"] == 60


def test_deliveries_of_a_batch_killed_by_the_hard_time_limit_are_recovered(celery_mode, settings, monkeypatch):
    """TimeLimitExceeded: the pool child is killed mid-send, the task is FAILURE without a retry,
    its deliveries were attempted and are still claimed by the dead child."""
    sent: list[dict] = []
    monkeypatch.setattr(send_batch_task, "apply_async", lambda **options: sent.append(options))
    campaign = create_campaign("Timetable", "Body", addresses(3))
    campaign.deliveries.update(attempts=1, claimed_by="celery:killed#0:1:x",
                               claimed_at=timezone.now() - timedelta(days=1))
    TaskResult.objects.create(
        task_id=f"bulk_email-{campaign.id}-1-0000abcd", task_name=SEND_BATCH, status="FAILURE",
        result=json.dumps({"exc_type": "TimeLimitExceeded", "exc_message": ["600"]}),
    )
    later = timezone.now() + stranded_after() + timedelta(seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    assert queue_health.apply().get()["recovered"] == 3
    assert sum(len(options["args"][1]) for options in sent) == 3


def test_a_batch_that_reaches_the_soft_time_limit_is_retried(
    celery_mode, smtp, monkeypatch
):
    from billiard.exceptions import SoftTimeLimitExceeded

    from bulk_email import tasks

    campaign = create_campaign("Timetable", "Body", addresses(2))
    ids = list(campaign.deliveries.values_list("pk", flat=True))

    real_send_batch = tasks.send_batch
    calls: list[int] = []

    def hits_the_soft_limit_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SoftTimeLimitExceeded()
        return real_send_batch(*args, **kwargs)

    monkeypatch.setattr(tasks, "send_batch", hits_the_soft_limit_once)
    result = send_batch_task.apply(args=(str(campaign.id), ids, 1, 1))  # eager: retries run inline

    assert result.state == "SUCCESS", result.traceback
    assert len(calls) == 2
    assert smtp.received() == {address: 1 for address in addresses(2)}
    assert settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.CELERY_TASK_TIME_LIMIT


def test_queue_health_reports_the_backlog(celery_mode):
    create_campaign("Timetable", "Body", addresses(3))

    report = queue_health.apply().get()

    assert report == {
        "recovered": 0, "pending": 3, "stale_claims": 0,
        "oldest_pending_seconds": report["oldest_pending_seconds"],
    }
    assert 0 <= report["oldest_pending_seconds"] < 60


def test_setup_periodic_tasks_registers_queue_health_once(celery_mode):
    first = json.loads(run("setup_periodic_tasks", "--health-interval", "60", "--json")[-1])
    second = json.loads(run("setup_periodic_tasks", "--health-interval", "60", "--json")[-1])
    disabled = json.loads(run("setup_periodic_tasks", "--health-interval", "0", "--json")[-1])

    assert (first["changed"], second["changed"], disabled["changed"]) == (True, False, True)
    task = PeriodicTask.objects.get(name=first["name"])
    assert task.task == QUEUE_HEALTH and not task.enabled
    with pytest.raises(CommandError, match="0 or more"):
        run("setup_periodic_tasks", "--health-interval", "-5")


def test_recipients_of_a_lost_task_message_are_enqueued_again_once_the_campaign_is_quiet(
    celery_worker, smtp, settings, monkeypatch
):
    recipients = addresses(25)
    campaign = create_campaign("Timetable", "Body", recipients)
    real_apply_async = send_batch_task.apply_async
    lost: list[dict] = []

    def lose_the_second_message(**options):
        if options["args"][2] == 2:
            lost.append(options)  # as if the broker popped it and the worker died
            return None
        return real_apply_async(**options)

    monkeypatch.setattr(send_batch_task, "apply_async", lose_the_second_message)
    dispatch(campaign)
    wait_for(lambda: campaign.counts()["sent"] == 20)
    monkeypatch.setattr(send_batch_task, "apply_async", real_apply_async)
    assert lost and campaign.counts()["pending"] == 5

    assert queue_health.apply().get()["recovered"] == 0  # the campaign is not quiet yet
    later = timezone.now() + stranded_after() + timedelta(seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    assert queue_health.apply().get()["recovered"] == 5
    wait_for(done(campaign))
    assert smtp.received() == {address: 1 for address in recipients}
    assert queue_health.apply().get()["recovered"] == 0
