"""The example app's staff page after apply.py --patch (patches/example_app/bulk-email-view.patch).

Posting 500 recipients returns a redirect to the campaign page at once in
every mode: no SMTP connection from the request (the loopback server's EHLO
count stays 0), the deliveries pending, the campaign handed to its mode.
"""
import pytest
from django.core import mail
from django.urls import reverse

from bulk_email.models import Campaign

pytestmark = pytest.mark.django_db

RECIPIENTS = "\n".join(f"student{i:03d}@school.test" for i in range(500))
FORM = {"subject": "Trip", "body": "Bring lunch.", "recipients": RECIPIENTS}


def post(client):
    response = client.post("/", FORM)
    campaign = Campaign.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("bulk_email:campaign-detail", args=[campaign.id])
    assert mail.outbox == []
    assert campaign.counts() == {"pending": 500, "sent": 0, "failed": 0}
    assert Campaign.objects.get().dispatched_at is not None
    return response, campaign


def test_batch_mode_queues_pokes_the_sender_and_gives_the_guidance(admin_client, smtp, settings, tmp_path,
                                                                     django_capture_on_commit_callbacks):
    spool = tmp_path / "spool"
    spool.mkdir()
    settings.BULK_EMAIL_BATCH_SPOOL_DIR = str(spool)
    with django_capture_on_commit_callbacks(execute=True):
        response, campaign = post(admin_client)

    assert smtp.ehlo_count == 0
    assert [path.name for path in spool.iterdir()] == [str(campaign.id)]
    page = admin_client.get(response["Location"]).content.decode()
    assert page.count("Batch mode: 500 recipients; for more than 50 the rq or celery mode") == 1
    assert "Queued 500 message(s)." in page


def test_rq_mode_enqueues_and_returns(admin_client, rq_mode, smtp, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response, campaign = post(admin_client)

    assert campaign.mode == "rq" and rq_mode.count == 25  # 500 / 20 per batch
    assert smtp.ehlo_count == 0
    assert "Batch mode:" not in admin_client.get(response["Location"]).content.decode()


@pytest.mark.queue_mode("celery")
@pytest.mark.django_db(transaction=True)
def test_celery_mode_enqueues_and_returns(admin_client, celery_mode, smtp):
    import redis

    response, campaign = post(admin_client)

    assert campaign.mode == "celery"
    assert redis.Redis.from_url(celery_mode.conf.broker_url).llen("email") == 25
    assert smtp.ehlo_count == 0


def test_the_page_links_to_the_campaign_list_and_keeps_its_field_names(admin_client):
    html = admin_client.get("/").content.decode()
    assert 'href="/bulk-email/"' in html
    assert all(f'name="{field}"' in html for field in ("subject", "body", "recipients"))
    assert 'name="viewport"' in html


def test_invalid_addresses_still_refused_before_any_campaign(admin_client):
    response = admin_client.post("/", {"subject": "Trip", "body": "x", "recipients": "a@school.test\nnope"})
    assert response.status_code == 200 and "Not a valid address: nope" in response.content.decode()
    assert Campaign.objects.count() == 0
