"""Database statements per message: the ledger's cost, counted (not timed).

Per message the sender needs the mark after the attempt, plus a claim
refresh when the last one is more than sending.REFRESH_INTERVAL old;
claiming (with the quota reservation) and releasing happen once per batch.
Before the batch claims it was a quota count, a claim and a mark per
message: 2.15 statements per message without the quota and 3.15 with it,
for 40 messages in batches of 20 (now 1.40 and 1.50).
"""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bulk_email.campaigns import create_campaign
from bulk_email.sending import send_campaign

pytestmark = pytest.mark.django_db

MESSAGES = 40


@pytest.mark.parametrize("quota", [0, 1000])
def test_statements_per_message(smtp, settings, sleep, quota, capsys):
    settings.BULK_EMAIL_DAILY_QUOTA = quota
    settings.BULK_EMAIL_BATCH_SIZE = 20
    campaign = create_campaign("Hi", "Body", [f"s{i:03d}@school.test" for i in range(MESSAGES)])

    with CaptureQueriesContext(connection) as queries:
        run = send_campaign(campaign, sleep=sleep)

    per_message = len(queries.captured_queries) / MESSAGES
    with capsys.disabled():
        print(f"\nstatements per message (quota {quota}): {per_message:.2f} "
              f"({len(queries.captured_queries)} for {MESSAGES})")
    assert run.counts["sent"] == MESSAGES
    assert per_message <= 1.6
