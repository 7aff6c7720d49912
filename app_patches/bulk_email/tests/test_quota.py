"""The daily quota, counted from the ledger across all campaigns and processes."""
from datetime import timedelta

import pytest
from django.utils import timezone

from bulk_email.campaigns import create_campaign
from bulk_email.models import Delivery
from bulk_email.sending import send_campaign

pytestmark = pytest.mark.django_db


def mark_sent(recipients: list[str], hours_ago: float) -> None:
    """Record earlier sends, as another process or an earlier run would have."""
    campaign = create_campaign("Earlier", "Body", recipients)
    campaign.deliveries.update(status="sent", sent_at=timezone.now() - timedelta(hours=hours_ago))


def test_quota_stops_before_the_limit_and_leaves_the_rest_pending(smtp, settings, sleep, caplog):
    settings.BULK_EMAIL_DAILY_QUOTA = 5
    settings.BULK_EMAIL_BATCH_SIZE = 2
    mark_sent(["a@earlier.test", "b@earlier.test"], hours_ago=3)  # counts: within 24 h
    mark_sent(["c@earlier.test"], hours_ago=25)  # does not count any more
    campaign = create_campaign("Hi", "Body", [f"s{i}@school.test" for i in range(8)])

    run = send_campaign(campaign, sleep=sleep)

    assert len(smtp.messages) == 3  # 2 + 3 = 5 sent in the last 24 h
    assert run.counts == {"pending": 5, "sent": 3, "failed": 0}
    assert run.stopped.startswith("daily quota of 5 reached")
    assert "daily quota of 5 reached" in caplog.text
    sent_today = Delivery.objects.filter(
        status="sent", sent_at__gte=timezone.now() - timedelta(days=1)
    ).count()
    assert sent_today == 5


def test_quota_zero_disables_the_check(smtp, settings, sleep):
    settings.BULK_EMAIL_DAILY_QUOTA = 0
    mark_sent([f"old{i}@earlier.test" for i in range(3)], hours_ago=1)
    campaign = create_campaign("Hi", "Body", [f"s{i}@school.test" for i in range(4)])

    run = send_campaign(campaign, sleep=sleep)

    assert run.counts["sent"] == 4 and run.stopped is None


def refuse_everything(delivery):
    return f"custom hook refused {delivery.recipient}"


def test_custom_quota_hook(smtp, settings, sleep):
    settings.BULK_EMAIL_QUOTA_HOOK = f"{__name__}.refuse_everything"
    campaign = create_campaign("Hi", "Body", ["a@school.test"])

    run = send_campaign(campaign, sleep=sleep)

    assert run.stopped == "custom hook refused a@school.test"
    assert smtp.messages == []
