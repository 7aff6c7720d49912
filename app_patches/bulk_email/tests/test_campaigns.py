"""Campaign creation, dispatch per mode, the status view and the installed app itself."""
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import IntegrityError

import bulk_email
from bulk_email.campaigns import create_campaign, unique_recipients
from bulk_email.dispatch import dispatch
from bulk_email.models import Delivery

APP_SOURCE = Path(__file__).resolve().parents[1]


def test_recipients_are_deduplicated_case_insensitively_keeping_the_first_spelling():
    assert unique_recipients([" Ann@School.test", "bob@school.test", "ann@school.TEST", "", "  "]) == [
        "Ann@School.test",
        "bob@school.test",
    ]


@pytest.mark.django_db
def test_create_campaign_writes_one_pending_delivery_per_distinct_recipient(settings):
    settings.DEFAULT_FROM_EMAIL = "office@school.test"
    campaign = create_campaign("Hi", "Body", ["a@x.test", "A@X.test", "b@x.test"])

    assert list(campaign.deliveries.values_list("recipient", "status", "attempts")) == [
        ("a@x.test", "pending", 0),
        ("b@x.test", "pending", 0),
    ]
    assert campaign.from_email == "office@school.test"
    assert campaign.mode == "batch"


@pytest.mark.django_db
def test_ledger_refuses_a_second_row_for_the_same_recipient_in_any_case():
    campaign = create_campaign("Hi", "Body", ["a@x.test"])
    with pytest.raises(IntegrityError):
        Delivery.objects.create(campaign=campaign, recipient="A@x.test")


@pytest.mark.django_db
@pytest.mark.parametrize(("subject", "recipients"), [("", ["a@x.test"]), ("Hi", [" ", ""])])
def test_create_campaign_rejects_empty_input(subject, recipients):
    with pytest.raises(ValueError):
        create_campaign(subject, "Body", recipients)


@pytest.mark.django_db
def test_dispatch_refuses_a_mode_it_does_not_know_instead_of_sending_inline(smtp):
    campaign = create_campaign("Hi", "Body", ["a@x.test"])
    campaign.mode = "kafka"  # e.g. a row written by a newer release

    with pytest.raises(ImproperlyConfigured, match="queue mode 'kafka' is not implemented"):
        dispatch(campaign)
    assert smtp.messages == []


@pytest.mark.django_db
def test_status_view_is_staff_only(client, django_user_model):
    campaign = create_campaign("Hi", "Body", ["a@x.test", "b@x.test"])
    url = f"/bulk-email/campaigns/{campaign.id}/status/"

    assert client.get(url).status_code == 302  # to the admin login
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    response = client.get(url)

    assert response.status_code == 200
    assert response.json() | {"created_at": None} == {
        "id": str(campaign.id),
        "subject": "Hi",
        "mode": "batch",
        "created_at": None,
        "pending": 2,
        "sent": 0,
        "failed": 0,
        "total": 2,
        "done": False,
    }


def test_tests_run_against_the_copy_installed_by_apply():
    installed = Path(bulk_email.__file__).resolve().parent
    assert installed != APP_SOURCE
    assert (installed / ".managed-by-edupulse-apply").is_file()
    assert not (installed / "tests").exists()


@pytest.mark.django_db
def test_models_and_migrations_agree():
    out = StringIO()
    call_command("makemigrations", "bulk_email", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
