"""rq mode against a real redis-server and SMTP server on loopback, jobs run by a burst worker."""
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from bulk_email.campaigns import create_campaign
from bulk_email.dispatch import dispatch
from bulk_email.models import Campaign, Delivery
from bulk_email.sending import claim

pytestmark = pytest.mark.django_db


def addresses(n: int) -> list[str]:
    return [f"student{i:03d}@school.test" for i in range(1, n + 1)]


def submit(recipients: list[str], capture) -> object:
    """Create and dispatch an rq campaign; enqueue happens on commit, as in production."""
    campaign = create_campaign("Timetable", "Body", recipients)
    with capture(execute=True):
        dispatch(campaign)
    return campaign


def work(queue) -> None:
    """Run every job on the queue (and immediate retries) in this process, then return."""
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().splitlines()


def jobs(queue) -> list[Job]:
    return [queue.fetch_job(job_id) for job_id in queue.get_job_ids()]


def test_campaign_is_one_job_per_batch_and_everyone_gets_exactly_one_message(
    rq_mode, smtp, django_capture_on_commit_callbacks
):
    recipients = addresses(95)

    campaign = submit(recipients, django_capture_on_commit_callbacks)

    queued = jobs(rq_mode)
    assert [len(job.args[1]) for job in queued] == [20, 20, 20, 20, 15]  # ceil(95/20) jobs
    assert all(job.retries_left == 2 for job in queued)  # Retry registered on every job
    assert smtp.messages == []  # submitting sends nothing
    work(rq_mode)
    assert smtp.received() == {address: 1 for address in recipients}
    assert smtp.ehlo_count == 5  # one SMTP session per job
    assert campaign.counts() == {"pending": 0, "sent": 95, "failed": 0}
    assert {job.get_status() for job in queued} == {JobStatus.FINISHED}


def test_a_job_executed_twice_sends_nothing_twice(rq_mode, smtp, django_capture_on_commit_callbacks):
    recipients = addresses(5)
    submit(recipients, django_capture_on_commit_callbacks)
    (job,) = jobs(rq_mode)
    work(rq_mode)

    rq_mode.enqueue_job(Job.fetch(job.id, connection=rq_mode.connection))  # as RQ's cleanup may
    work(rq_mode)

    assert smtp.received() == {address: 1 for address in recipients}
    assert Job.fetch(job.id, connection=rq_mode.connection).return_value() == {"sent": 0, "failed": 0}


def test_a_job_left_behind_by_a_mode_switch_sends_nothing(rq_mode, smtp, django_capture_on_commit_callbacks):
    """queue_switch move hands a campaign to another mode; its old jobs then stand aside."""
    campaign = submit(addresses(5), django_capture_on_commit_callbacks)
    (job,) = jobs(rq_mode)
    Campaign.objects.filter(pk=campaign.pk).update(mode="celery")

    work(rq_mode)

    assert smtp.messages == []
    assert campaign.counts() == {"pending": 5, "sent": 0, "failed": 0}
    assert Job.fetch(job.id, connection=rq_mode.connection).return_value() == {
        "sent": 0, "failed": 0, "skipped": "celery"}


def test_claims_are_exclusive_until_they_expire(rq_mode, settings):
    campaign = create_campaign("Hi", "Body", addresses(1))
    delivery = campaign.deliveries.get()

    assert claim(delivery, "rq:first") is True
    assert claim(delivery, "rq:second") is False
    Delivery.objects.filter(pk=delivery.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=settings.BULK_EMAIL_CLAIM_TIMEOUT + 1)
    )
    assert claim(Delivery.objects.get(pk=delivery.pk), "rq:second") is True
    assert Delivery.objects.get(pk=delivery.pk).claimed_by == "rq:second"


def test_claim_left_by_a_killed_run_is_reclaimed_after_the_timeout_and_sent_once(
    rq_mode, smtp, settings, django_capture_on_commit_callbacks
):
    recipients = addresses(3)
    campaign = create_campaign("Hi", "Body", recipients)
    orphan = campaign.deliveries.get(recipient=recipients[0])
    # A worker SIGKILLed between claim and mark leaves exactly this behind.
    Delivery.objects.filter(pk=orphan.pk).update(claimed_by="rq:killed", claimed_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        dispatch(campaign)

    work(rq_mode)  # the claim is fresh: the job leaves it alone and retries until it gives up

    assert smtp.received() == {recipients[1]: 1, recipients[2]: 1}
    assert len(FailedJobRegistry(queue=rq_mode)) == 1
    assert run("campaign_status", str(campaign.id), "--json")[-1].count('"sending": 1') == 1

    Delivery.objects.filter(pk=orphan.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=settings.BULK_EMAIL_CLAIM_TIMEOUT + 1)
    )
    run("retry_failed")
    work(rq_mode)

    assert smtp.received() == {address: 1 for address in recipients}
    assert campaign.counts() == {"pending": 0, "sent": 3, "failed": 0}


def test_transient_errors_make_the_job_retry_and_everything_arrives(
    rq_mode, smtp, settings, django_capture_on_commit_callbacks
):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    smtp.mail_replies = ["421 4.7.0 Try again later"] * 3  # three deferred in a row: outage
    recipients = addresses(4)

    campaign = submit(recipients, django_capture_on_commit_callbacks)
    (job,) = jobs(rq_mode)
    work(rq_mode)

    job = Job.fetch(job.id, connection=rq_mode.connection)
    assert job.retries_left == 1  # the first run raised DeliveriesPending, RQ ran it again
    assert job.get_status() == JobStatus.FINISHED
    assert smtp.received() == {address: 1 for address in recipients}
    assert campaign.counts()["sent"] == 4


def test_permanent_rejection_is_recorded_and_does_not_fail_the_job(
    rq_mode, smtp, django_capture_on_commit_callbacks
):
    recipients = addresses(3)
    smtp.rejected = {recipients[1]: "550 5.1.1 No such user"}

    campaign = submit(recipients, django_capture_on_commit_callbacks)
    (job,) = jobs(rq_mode)
    work(rq_mode)

    job = Job.fetch(job.id, connection=rq_mode.connection)
    assert job.get_status() == JobStatus.FINISHED and job.retries_left == 2  # never retried
    assert smtp.rcpt_count[recipients[1]] == 1
    assert campaign.deliveries.get(recipient=recipients[1]).status == "failed"
    assert campaign.counts() == {"pending": 0, "sent": 2, "failed": 1}


def test_exhausted_job_keeps_its_deliveries_pending_and_retry_failed_delivers_them(
    rq_mode, smtp, settings, django_capture_on_commit_callbacks
):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    smtp.mail_replies = ["421 4.3.2 Service shutting down"] * 9  # 3 runs x 3 recipients
    recipients = addresses(5)
    campaign = submit(recipients, django_capture_on_commit_callbacks)
    work(rq_mode)
    failed = FailedJobRegistry(queue=rq_mode)
    assert len(failed) == 1
    assert campaign.counts() == {"pending": 5, "sent": 0, "failed": 0}  # never lost

    dry = run("retry_failed", "--dry-run", "--json")

    assert dry[0] == "would retry 1 failed jobs"
    assert json.loads(dry[-1]) == {"mode": "rq", "dry_run": True, "jobs": 1, "retried": 0}
    assert len(failed) == 1 and rq_mode.count == 0

    assert json.loads(run("retry_failed", "--json")[-1])["retried"] == 1
    work(rq_mode)

    assert smtp.received() == {address: 1 for address in recipients}
    assert len(failed) == 0
    assert run("retry_failed") == ["nothing to retry"]


def test_send_campaign_returns_at_once_and_status_counts_jobs(
    rq_mode, smtp, django_capture_on_commit_callbacks
):
    to = [arg for address in addresses(45) for arg in ("--to", address)]
    with django_capture_on_commit_callbacks(execute=True):
        lines = run("send_campaign", "--subject", "Hi", "--body", "x", *to, "--json")

    summary = json.loads(lines[-1])
    assert summary == {"id": summary["id"], "mode": "rq", "recipients": 45, "sent": 0, "failed": 0, "pending": 45,
        "held": False,
    }
    status = json.loads(run("campaign_status", summary["id"], "--json")[-1])
    assert (status["queued"], status["started"], status["failed_jobs"], status["pending"]) == (3, 0, 0, 45)

    work(rq_mode)

    assert run("campaign_status", summary["id"]) == [
        f"campaign {summary['id']} mode=rq recipients=45 sent=45 failed=0 pending=0 sending=0 "
        "queued=0 started=0 failed_jobs=0"
    ]


def test_status_counts_a_job_a_worker_is_taking_as_started(rq_mode, smtp, django_capture_on_commit_callbacks):
    """A worker moves a job from the queue to the queue's intermediate list (BLMOVE), and only then
    into StartedJobRegistry: in between the job is in neither, and the status must not lose it."""
    campaign = submit(addresses(45), django_capture_on_commit_callbacks)
    connection = rq_mode.connection
    # What rq's Queue.dequeue_any does first, before prepare_job_execution.
    connection.lmove(rq_mode.key, rq_mode.intermediate_queue_key, "LEFT", "RIGHT")

    status = json.loads(run("campaign_status", str(campaign.id), "--json")[-1])

    assert (status["queued"], status["started"], status["failed_jobs"]) == (2, 1, 0)


def test_batch_delay_spaces_the_jobs(rq_mode, settings, django_capture_on_commit_callbacks):
    settings.BULK_EMAIL_BATCH_SIZE = 2
    settings.BULK_EMAIL_BATCH_DELAY = 30
    before = timezone.now()

    submit(addresses(5), django_capture_on_commit_callbacks)

    assert rq_mode.count == 1  # the first batch at once
    scheduled = ScheduledJobRegistry(queue=rq_mode)
    delays = sorted(
        (scheduled.get_scheduled_time(job_id) - before).total_seconds() for job_id in scheduled.get_job_ids()
    )
    assert len(delays) == 2
    assert 29 <= delays[0] <= 32 and 59 <= delays[1] <= 62


def test_django_rq_dashboard_is_staff_only(client, django_user_model, redis_server):
    anonymous = client.get("/django-rq/")
    assert anonymous.status_code == 302
    assert "/login/" in anonymous["Location"]

    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    response = client.get("/django-rq/")
    assert response.status_code == 200
    assert b"email" in response.content


def test_job_of_a_killed_worker_is_recovered_and_delivered_once(
    rq_mode, smtp, django_capture_on_commit_callbacks
):
    """SIGKILL leaves the job in StartedJobRegistry; rq_maintenance hands it back to RQ."""
    recipients = addresses(5)
    campaign = submit(recipients, django_capture_on_commit_callbacks)
    (job,) = jobs(rq_mode)
    # What a worker killed mid-job leaves behind: the job off the queue, marked started, in the
    # started registry with an execution entry whose heartbeat expired long ago.
    rq_mode.remove(job)
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queue=rq_mode)
    rq_mode.connection.zadd(registry.key, {f"{job.id}:killed-execution": 1})

    assert run("rq_maintenance") == [
        "recovered 1 abandoned jobs", "re-enqueued 0 recipients of lost jobs", "enqueued 0 due scheduled jobs"]
    # Back on the queue before any worker ran (a worker's own maintenance would also do it,
    # but only every 10 minutes).
    # (get_job_ids() would run the registry cleanup itself: look without it.)
    assert job.id not in registry.get_job_ids(cleanup=False)
    assert rq_mode.get_job_ids() == [job.id]
    work(rq_mode)

    assert smtp.received() == {address: 1 for address in recipients}
    assert campaign.counts() == {"pending": 0, "sent": 5, "failed": 0}
    assert run("rq_maintenance") == [
        "recovered 0 abandoned jobs", "re-enqueued 0 recipients of lost jobs", "enqueued 0 due scheduled jobs"]


def test_due_scheduled_jobs_are_enqueued_while_no_scheduler_holds_the_lock(
    rq_mode, settings, smtp, django_capture_on_commit_callbacks
):
    """After the scheduling worker is killed, spaced batches must not wait for its successor."""
    settings.BULK_EMAIL_BATCH_DELAY = 60
    recipients = addresses(45)
    campaign = submit(recipients, django_capture_on_commit_callbacks)
    scheduled = ScheduledJobRegistry(queue=rq_mode)
    assert len(scheduled) == 2  # batches 2 and 3, one and two minutes from now
    # Make them due, as if the minutes had passed with no scheduler alive.
    for job_id in scheduled.get_job_ids():
        rq_mode.connection.zadd(scheduled.key, {job_id: 1})
    lock = rq_mode.connection.set("rq:scheduler-lock:email", "live-scheduler", ex=60)

    assert lock and run("rq_maintenance")[-1] == "enqueued 0 due scheduled jobs"  # a live one has it
    rq_mode.connection.delete("rq:scheduler-lock:email")
    assert run("rq_maintenance")[-1] == "enqueued 2 due scheduled jobs"
    work(rq_mode)

    assert smtp.received() == {address: 1 for address in recipients}
    assert campaign.counts() == {"pending": 0, "sent": 45, "failed": 0}


def test_deliveries_whose_jobs_vanished_from_redis_are_enqueued_again_and_sent_once(
    rq_mode, smtp, settings, django_capture_on_commit_callbacks
):
    """A Redis crash or restore, django-rq's "Empty queue", a half-done enqueue: the ledger still
    says pending but no job will ever run. The maintenance timer finds and re-enqueues them."""
    settings.BULK_EMAIL_BATCH_SIZE = 5
    recipients = addresses(15)
    campaign = submit(recipients, django_capture_on_commit_callbacks)
    others = ["other1@school.test", "other2@school.test"]
    untouched = submit(others, django_capture_on_commit_callbacks)  # its job stays
    queued = [job for job in jobs(rq_mode) if str(campaign.id) in job.id]
    SimpleWorker([rq_mode], connection=rq_mode.connection).work(burst=True, max_jobs=1)  # batch 1 sent
    for job in queued[1:]:  # the rest vanish mid-campaign
        rq_mode.remove(job)
        job.delete()
    Campaign.objects.filter(pk=campaign.pk).update(dispatched_at=timezone.now() - timedelta(minutes=5))
    Campaign.objects.filter(pk=untouched.pk).update(dispatched_at=timezone.now() - timedelta(minutes=5))

    with django_capture_on_commit_callbacks(execute=True):  # django-rq enqueues on commit
        lines = run("rq_maintenance", "--json")

    assert lines[1] == "re-enqueued 10 recipients of lost jobs"
    assert json.loads(lines[-1])["reenqueued"] == 10
    assert run("rq_maintenance")[1] == "re-enqueued 0 recipients of lost jobs"  # their jobs exist now
    work(rq_mode)
    assert smtp.received() == {address: 1 for address in [*recipients, *others]}
    assert campaign.counts() == {"pending": 0, "sent": 15, "failed": 0}
