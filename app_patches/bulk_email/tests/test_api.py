"""bulk_email.api.send_bulk_email: the one-line change for a site's own view.

It must return at once in every mode: no SMTP connection in the caller's
process (the server's EHLO count stays 0), the deliveries pending, the
campaign handed to its mode (batch: the spool poke for the batch sender).
"""
import json

import pytest

from bulk_email.api import guidance, send_bulk_email
from bulk_email.models import Campaign
from bulk_email.modes.batch import GUIDE_RQ_THRESHOLD

pytestmark = pytest.mark.django_db


def addresses(n: int) -> list[str]:
    return [f"student{i:03d}@school.test" for i in range(1, n + 1)]


def test_batch_mode_returns_at_once_and_pokes_the_sender_on_commit(
    smtp, spool, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        campaign = send_bulk_email("Trip", "Bring lunch.", addresses(120), html_body="<p>Bring lunch.</p>",
                                   from_email="office@school.test")
        assert list(spool.iterdir()) == []  # not before the campaign is committed
    for callback in callbacks:
        callback()

    stored = Campaign.objects.get(pk=campaign.pk)
    assert (stored.mode, stored.from_email, stored.html_body) == ("batch", "office@school.test", "<p>Bring lunch.</p>")
    assert stored.dispatched_at is not None
    assert stored.counts() == {"pending": 120, "sent": 0, "failed": 0}
    assert [path.name for path in spool.iterdir()] == [str(campaign.id)]
    assert (spool / str(campaign.id)).read_bytes() == b""
    assert smtp.ehlo_count == 0 and smtp.messages == []


def test_batch_mode_without_a_spool_dir_still_returns_at_once(smtp, settings, django_capture_on_commit_callbacks):
    settings.BULK_EMAIL_BATCH_SPOOL_DIR = ""
    with django_capture_on_commit_callbacks(execute=True):
        campaign = send_bulk_email("Trip", "x", addresses(3))

    assert Campaign.objects.get(pk=campaign.pk).dispatched_at is not None
    assert smtp.ehlo_count == 0


def test_an_unwritable_spool_dir_does_not_fail_the_request(smtp, settings, tmp_path, caplog,
                                                          django_capture_on_commit_callbacks):
    settings.BULK_EMAIL_BATCH_SPOOL_DIR = str(tmp_path / "missing")
    with django_capture_on_commit_callbacks(execute=True):
        campaign = send_bulk_email("Trip", "x", addresses(3))

    assert Campaign.objects.get(pk=campaign.pk).dispatched_at is not None  # the timer sends it
    assert any("cannot poke the batch sender" in record.getMessage() for record in caplog.records)


def test_during_a_switch_the_campaign_is_held_and_nobody_is_poked(smtp, spool, settings, tmp_path,
                                                                 django_capture_on_commit_callbacks):
    hold = tmp_path / "queue-switch"
    hold.write_text("batch")
    settings.BULK_EMAIL_HOLD_FILE = str(hold)
    with django_capture_on_commit_callbacks(execute=True):
        campaign = send_bulk_email("Trip", "x", addresses(3))

    stored = Campaign.objects.get(pk=campaign.pk)
    assert (stored.mode, stored.dispatched_at) == ("batch", None)
    assert list(spool.iterdir()) == [] and smtp.ehlo_count == 0


def test_rq_mode_enqueues_and_returns(rq_mode, smtp, spool, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        campaign = send_bulk_email("Trip", "x", addresses(45))

    assert campaign.mode == "rq" and rq_mode.count == 3
    assert Campaign.objects.get(pk=campaign.pk).dispatched_at is not None
    assert smtp.ehlo_count == 0 and list(spool.iterdir()) == []


@pytest.mark.queue_mode("celery")
@pytest.mark.django_db(transaction=True)
def test_celery_mode_enqueues_and_returns(celery_mode, smtp, spool):
    import redis

    campaign = send_bulk_email("Trip", "x", addresses(45))

    assert campaign.mode == "celery"
    assert Campaign.objects.get(pk=campaign.pk).dispatched_at is not None
    broker = redis.Redis.from_url(celery_mode.conf.broker_url)
    assert broker.llen("email") == 3  # three task messages waiting, no worker running
    assert smtp.ehlo_count == 0 and list(spool.iterdir()) == []
    assert json.loads(broker.lindex("email", 0))["headers"]["task"] == "bulk_email.tasks.send_batch"


@pytest.mark.parametrize("mode", ["batch", "rq"])
def test_input_errors_are_value_errors_and_create_nothing(settings, mode):
    settings.BULK_EMAIL_QUEUE_MODE = mode
    with pytest.raises(ValueError, match="at least one recipient"):
        send_bulk_email("Trip", "x", [" "])
    assert Campaign.objects.count() == 0


def test_guidance_only_for_batch_campaigns_above_the_guides_threshold():
    assert GUIDE_RQ_THRESHOLD == 50
    small = send_bulk_email("Trip", "x", addresses(50))
    big = send_bulk_email("Trip", "x", addresses(300))
    big_rq = Campaign.objects.get(pk=big.pk)
    big_rq.mode = "rq"

    assert guidance(small) is None
    assert guidance(big) == (
        "Batch mode: 300 recipients; for more than 50 the rq or celery mode sends faster "
        "and retries in the background (site.yml -e queue_mode=rq)"
    )
    assert guidance(big_rq) is None
