"""The example app as users have it before the queue work."""
import pytest
from django.core import mail


def test_healthz_answers_ok_without_the_database(client):
    # No django_db mark: pytest-django makes any query here raise, so this
    # also proves deploy checks do not depend on the database.
    response = client.get("/healthz/")
    assert response.status_code == 200
    assert response.content == b"ok"
    assert response["Content-Type"].startswith("text/plain")


def test_admin_is_mounted(client):
    assert client.get("/admin/login/").status_code == 200


@pytest.mark.django_db
def test_bulk_email_page_is_for_staff_only(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_unpatched_mail_helper_sends_one_message_per_recipient(mailoutbox):
    # The tests run on the copy patched by apply.py --patch (the staff page then queues, see
    # app_patches/bulk_email/tests/test_example_view.py); core.mail is the "before" code.
    from core.mail import send_bulk_email

    assert send_bulk_email("Trip", "Bring lunch.", ["a@school.test", "b@school.test", "c@school.test"]) == 3
    assert [m.to for m in mailoutbox] == [["a@school.test"], ["b@school.test"], ["c@school.test"]]
    assert mail.outbox[0].subject == "Trip"


@pytest.mark.django_db
def test_bulk_email_rejects_invalid_addresses(admin_client, mailoutbox):
    response = admin_client.post("/", {"subject": "Trip", "body": "x", "recipients": "a@school.test\nnope"})

    assert response.status_code == 200
    assert "Not a valid address: nope" in response.content.decode()
    assert mailoutbox == []
