"""queue_status in celery mode: broker queue depth, workers through inspect, failed results.

Runs in the celery pytest run only (EDUPULSE_TEST_QUEUE_MODE=celery), like test_celery.py.
"""
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django_celery_results.models import TaskResult

from polling import wait_for

from bulk_email.campaigns import create_campaign
from bulk_email.dispatch import dispatch
from bulk_email.tasks import SEND_BATCH

pytestmark = [pytest.mark.queue_mode("celery"), pytest.mark.django_db(transaction=True)]


def addresses(n: int) -> list[str]:
    return [f"student{i:03d}@school.test" for i in range(1, n + 1)]


def status(*args: str) -> list[str]:
    out = StringIO()
    call_command("queue_status", "--timeout", "2", *args, stdout=out)
    return out.getvalue().splitlines()


def report() -> dict:
    return json.loads(status("--json")[-1])


def test_messages_waiting_in_the_broker_are_counted_without_consuming_them(celery_mode, smtp):
    assert report()["celery"]["queues"] == {"email": 0, "default": 0}  # no queue yet: 0, not an error
    dispatch(create_campaign("Hi", "Body", addresses(45)))  # 3 tasks, no worker running

    result = report()

    assert result["errors"] == []
    assert result["celery"]["queues"] == {"email": 3, "default": 0}
    assert result["celery"]["workers"] == {}
    assert "celery queue=email messages=3" in status()
    assert report()["celery"]["queues"]["email"] == 3  # still there: the probe took nothing


def test_live_worker_and_failed_results_are_reported(celery_worker, smtp, settings):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    settings.BULK_EMAIL_CELERY_MAX_RETRIES = 0
    smtp.mail_replies = ["421 4.3.2 Service shutting down"] * 3
    campaign = create_campaign("Hi", "Body", addresses(3))
    dispatch(campaign)
    wait_for(lambda: TaskResult.objects.filter(task_name=SEND_BATCH, status="FAILURE").exists())

    result = report()

    assert result["errors"] == [], result["errors"]
    assert result["celery"]["results"] == {"started": 0, "retrying": 0, "failed": 1}
    (name,) = result["celery"]["workers"]
    assert result["celery"]["workers"][name] == {"active": 0, "reserved": 0, "scheduled": 0}
    assert result["ledger"]["pending"] == 3  # never lost: retry_failed's work
    lines = status()
    assert "celery workers=1 active=0 reserved=0 scheduled=0" in lines
    assert "celery results started=0 retrying=0 failed=1" in lines
