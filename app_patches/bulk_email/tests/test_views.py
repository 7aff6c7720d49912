"""The staff pages: campaign list, progress page, JSON status, retry button, admin link.

Staff only (anonymous and non-staff users go to the admin login and see no
recipient), CSRF on the retry POST, 404 for unknown ids, and the element
ids the progress poller and the end-to-end test rely on.
"""
import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from bulk_email import retry as retrying
from bulk_email.campaigns import create_campaign
from bulk_email.models import Campaign, Delivery

pytestmark = pytest.mark.django_db

SECRET_RECIPIENT = "private.student@school.test"


@pytest.fixture
def campaign() -> Campaign:
    """A dispatched batch campaign: 2 sent, 1 failed (with its error), 1 pending with an error, 1 pending."""
    campaign = create_campaign("Exams", "x", ["s1@x.test", "s2@x.test", SECRET_RECIPIENT, "p1@x.test", "p2@x.test"])
    rows = {d.recipient: d for d in campaign.deliveries.all()}
    Delivery.objects.filter(pk__in=[rows["s1@x.test"].pk, rows["s2@x.test"].pk]).update(
        status="sent", sent_at=timezone.now(), attempts=1)
    Delivery.objects.filter(pk=rows[SECRET_RECIPIENT].pk).update(
        status="failed", attempts=1, last_error="SMTPRecipientsRefused: 550 5.1.1 unknown user")
    Delivery.objects.filter(pk=rows["p1@x.test"].pk).update(attempts=5, last_error="SMTPDataError: 421 try later")
    Campaign.objects.filter(pk=campaign.pk).update(dispatched_at=timezone.now())
    return Campaign.objects.get(pk=campaign.pk)


@pytest.fixture
def staff_client(client, django_user_model) -> Client:
    client.force_login(django_user_model.objects.create_user("staff", password="pw", is_staff=True))
    return client


def urls(campaign: Campaign) -> dict[str, str]:
    return {
        "list": reverse("bulk_email:campaign-list"),
        "detail": reverse("bulk_email:campaign-detail", args=[campaign.id]),
        "status": reverse("bulk_email:campaign-status", args=[campaign.id]),
        "retry": reverse("bulk_email:campaign-retry", args=[campaign.id]),
    }


def test_the_url_contract(campaign):
    assert urls(campaign) == {
        "list": "/bulk-email/",
        "detail": f"/bulk-email/campaigns/{campaign.id}/",
        "status": f"/bulk-email/campaigns/{campaign.id}/status/",
        "retry": f"/bulk-email/campaigns/{campaign.id}/retry/",
    }


@pytest.mark.parametrize("page", ["list", "detail", "status", "retry"])
def test_anonymous_and_non_staff_users_are_sent_to_the_login_and_see_no_recipient(
    client, django_user_model, campaign, page
):
    url = urls(campaign)[page]
    method = client.post if page == "retry" else client.get
    response = method(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    client.force_login(django_user_model.objects.create_user("teacher", password="pw", is_staff=False))
    response = method(url, follow=True)

    assert response.redirect_chain[0][0].startswith("/admin/login/")
    assert SECRET_RECIPIENT not in response.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).counts()["failed"] == 1  # the POST changed nothing


@pytest.mark.parametrize("page", ["detail", "status", "retry"])
def test_unknown_ids_are_404(staff_client, page):
    unknown = Campaign(id=uuid.uuid4())
    method = staff_client.post if page == "retry" else staff_client.get
    assert method(urls(unknown)[page]).status_code == 404


def test_list_shows_counts_newest_first_and_links_to_each_campaign(staff_client, campaign):
    older = create_campaign("Older one", "x", ["a@x.test"])
    Campaign.objects.filter(pk=older.pk).update(created_at=timezone.now() - timezone.timedelta(days=1))

    response = staff_client.get("/bulk-email/")

    html = response.content.decode()
    assert response.status_code == 200
    assert html.index("Exams") < html.index("Older one")
    assert f'href="/bulk-email/campaigns/{campaign.id}/"' in html
    row = re.search(r"Exams</a></td>(.*?)</tr>", html, re.S).group(1)
    assert re.findall(r'<td class="n">(\d+)</td>', row) == ["2", "1", "2"]
    assert 'name="viewport"' in html


def test_list_is_paginated_by_50(staff_client):
    for i in range(51):
        create_campaign(f"Campaign {i}", "x", ["a@x.test"])

    first = staff_client.get("/bulk-email/").content.decode()
    second = staff_client.get("/bulk-email/?page=2").content.decode()

    assert first.count("/bulk-email/campaigns/") == 50 and second.count("/bulk-email/campaigns/") == 1
    assert "Page 1 of 2" in first


def test_detail_page_has_the_progress_elements_and_lists_the_problems(staff_client, campaign):
    html = staff_client.get(urls(campaign)["detail"]).content.decode()

    assert '<main id="campaign" data-state="running"' in html
    assert '<progress id="campaign-progress" value="3" max="5">' in html
    assert '<span id="campaign-percent">60 %</span>' in html
    assert '<span id="count-sent">2</span>' in html
    assert '<span id="count-failed">1</span>' in html
    assert '<span id="count-pending">2</span>' in html
    assert SECRET_RECIPIENT in html and "550 5.1.1 unknown user" in html
    assert "p1@x.test" in html and "421 try later" in html
    assert "p2@x.test" not in html  # pending without an error: nothing to say about it
    assert f'<form id="retry-form" method="post" action="/bulk-email/campaigns/{campaign.id}/retry/">' in html
    assert "csrfmiddlewaretoken" in html
    assert f'data-status-url="/bulk-email/campaigns/{campaign.id}/status/"' in html


def test_detail_page_of_a_finished_campaign_is_done(staff_client):
    campaign = create_campaign("Done", "x", ["a@x.test"])
    campaign.deliveries.update(status="sent")

    html = staff_client.get(urls(campaign)["detail"]).content.decode()

    assert 'data-state="done"' in html and '<span id="campaign-percent">100 %</span>' in html


def test_detail_caps_the_problem_list_with_a_count(staff_client, monkeypatch, campaign):
    monkeypatch.setattr("bulk_email.views.PROBLEMS_SHOWN", 1)
    html = staff_client.get(urls(campaign)["detail"]).content.decode()
    assert "(2)" in html and "… and 1 more" in html


def test_status_json_keys(staff_client, campaign):
    data = staff_client.get(urls(campaign)["status"]).json()

    assert set(data) == {"id", "subject", "mode", "created_at", "pending", "sent", "failed", "total", "done"}
    assert (data["sent"], data["failed"], data["pending"], data["total"], data["done"]) == (2, 1, 2, 5, False)
    assert SECRET_RECIPIENT not in str(data)


def test_retry_is_post_only(staff_client, campaign):
    assert staff_client.get(urls(campaign)["retry"]).status_code == 405


def test_retry_needs_the_csrf_token(django_user_model, campaign):
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_user("staff", password="pw", is_staff=True))

    assert client.post(urls(campaign)["retry"]).status_code == 403
    assert Campaign.objects.get(pk=campaign.pk).counts()["failed"] == 1

    page = client.get(urls(campaign)["detail"]).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(urls(campaign)["retry"], {"csrfmiddlewaretoken": token})
    assert response.status_code == 302


def test_retry_button_requeues_failed_and_pending_through_the_commands_function(
    staff_client, campaign, smtp, settings, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    spool = tmp_path / "spool"
    spool.mkdir()
    settings.BULK_EMAIL_BATCH_SPOOL_DIR = str(spool)
    calls = []
    real = retrying.retry_campaign
    monkeypatch.setattr("bulk_email.views.retry_campaign",
                        lambda *a, **kw: calls.append(kw) or real(*a, **kw))

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(urls(campaign)["retry"], follow=True)

    assert calls == [{"include_failed": True, "wait": False}]
    assert response.redirect_chain == [(urls(campaign)["detail"], 302)]
    assert "Re-queued 3 deliveries (1 of them had failed)." in response.content.decode()
    stored = Campaign.objects.get(pk=campaign.pk)
    assert stored.counts() == {"pending": 3, "sent": 2, "failed": 0}
    assert stored.deliveries.get(recipient=SECRET_RECIPIENT).last_error.startswith("SMTPRecipientsRefused")
    assert [path.name for path in spool.iterdir()] == [str(campaign.id)]  # handed to the batch sender
    assert smtp.ehlo_count == 0  # nothing sent inside the request


def test_retry_of_a_finished_campaign_says_so(staff_client):
    campaign = create_campaign("Done", "x", ["a@x.test"])
    campaign.deliveries.update(status="sent")

    response = staff_client.post(urls(campaign)["retry"], follow=True)

    assert "Nothing to retry" in response.content.decode()


def test_rq_retry_button_drops_the_failed_jobs_and_enqueues_the_pending_again(
    rq_mode, smtp, settings, staff_client, django_capture_on_commit_callbacks
):
    from rq import SimpleWorker
    from rq.registry import FailedJobRegistry

    from bulk_email.dispatch import dispatch

    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    smtp.mail_replies = ["421 4.3.2 try later"] * 30  # every retry of the job fails: it lands in failed
    smtp.rejected = {"bad@x.test": "550 5.1.1 unknown"}
    campaign = create_campaign("Hi", "x", ["a@x.test", "b@x.test", "c@x.test", "bad@x.test"])
    with django_capture_on_commit_callbacks(execute=True):
        dispatch(campaign)
    SimpleWorker([rq_mode], connection=rq_mode.connection).work(burst=True)
    registry = FailedJobRegistry(queue=rq_mode)
    assert len(registry) == 1
    smtp.mail_replies = []
    campaign.deliveries.filter(recipient="a@x.test").update(status="failed", last_error="550 no")

    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(urls(campaign)["retry"])

    assert len(registry) == 0  # not retried a second time by retry_failed
    assert rq_mode.count == 1 and smtp.messages == []  # enqueued, not sent in the request
    SimpleWorker([rq_mode], connection=rq_mode.connection).work(burst=True)
    assert smtp.received() == {"a@x.test": 1, "b@x.test": 1, "c@x.test": 1}


def test_admin_change_page_links_to_the_progress_page(admin_client, campaign):
    html = admin_client.get(reverse("admin:bulk_email_campaign_change", args=[campaign.pk])).content.decode()
    assert f'<a href="/bulk-email/campaigns/{campaign.id}/">View progress</a>' in html
