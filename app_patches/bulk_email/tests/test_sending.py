"""The batch sender against a real SMTP server on loopback."""
import logging
import os
import smtplib

import pytest
from django.core.mail import get_connection
from django.utils import timezone

from bulk_email.campaigns import create_campaign
from bulk_email.models import Delivery
from bulk_email.sending import (
    CAMPAIGN_HEADER,
    OUTAGE_AFTER,
    SmtpConfigurationError,
    classify,
    send_campaign,
    send_deliveries,
)

pytestmark = pytest.mark.django_db


def addresses(n: int, domain: str = "school.test") -> list[str]:
    return [f"student{i:03d}@{domain}" for i in range(1, n + 1)]


def statuses(campaign) -> dict[str, str]:
    return dict(campaign.deliveries.values_list("recipient", "status"))


def test_every_recipient_gets_exactly_one_message(smtp, sleep):
    recipients = addresses(45)
    campaign = create_campaign("Exam dates", "See the attached plan.", recipients)

    run = send_campaign(campaign, sleep=sleep)

    assert smtp.received() == {address: 1 for address in recipients}
    assert run.counts == {"pending": 0, "sent": 45, "failed": 0}
    assert set(statuses(campaign).values()) == {"sent"}
    assert all(d.sent_at is not None and d.attempts == 1 for d in campaign.deliveries.all())


def test_messages_carry_campaign_header_and_unique_message_ids(smtp, sleep):
    campaign = create_campaign("Hi", "Text body", addresses(5), html_body="<p>HTML body</p>")

    send_campaign(campaign, sleep=sleep)

    messages = [message for _, message in smtp.messages]
    assert {m[CAMPAIGN_HEADER] for m in messages} == {str(campaign.id)}
    assert len({m["Message-ID"] for m in messages}) == 5
    assert all(m.get_content_type() == "multipart/alternative" for m in messages)


def test_one_connection_per_batch_and_delay_between_batches(smtp, settings, sleep):
    settings.BULK_EMAIL_BATCH_SIZE = 3
    settings.BULK_EMAIL_BATCH_DELAY = 0.5
    campaign = create_campaign("Hi", "Body", addresses(7))

    run = send_campaign(campaign, sleep=sleep)

    assert run.batches == 3
    assert smtp.ehlo_count == 3  # 3 + 3 + 1 messages, one session each
    assert sleep.calls == [0.5, 0.5]  # between batches, not after the last one
    assert len(smtp.messages) == 7


def test_batch_log_lines(smtp, settings, sleep, caplog):
    settings.BULK_EMAIL_BATCH_SIZE = 2
    campaign = create_campaign("Hi", "Body", addresses(3))

    with caplog.at_level(logging.INFO, logger="bulk_email"):
        send_campaign(campaign, sleep=sleep)

    lines = [r.getMessage() for r in caplog.records if "batch email" in r.getMessage()]
    assert f"batch email campaign={campaign.id} batch=1/2 sent=2 failed=0 pending=0" in lines
    assert f"batch email campaign={campaign.id} batch=2/2 sent=1 failed=0 pending=0" in lines
    assert lines[-1].startswith(
        f"batch email campaign={campaign.id} finished batches=2/2 sent=3 failed=0 pending=0"
    )


@pytest.mark.parametrize("reply", ["421 4.7.0 Try again later", "451 4.3.0 Local error"])
def test_transient_reply_is_retried_with_backoff_then_delivered(smtp, sleep, reply):
    smtp.mail_replies = [reply, reply]
    recipients = addresses(3)
    campaign = create_campaign("Hi", "Body", recipients)

    run = send_campaign(campaign, sleep=sleep)

    assert smtp.received() == {address: 1 for address in recipients}
    assert run.counts["sent"] == 3
    first = campaign.deliveries.get(recipient=recipients[0])
    assert first.attempts == 3
    assert first.last_error == ""
    assert sleep.calls == [2, 4]  # exponential from BULK_EMAIL_RETRY_BACKOFF


def test_transient_reply_at_data_is_retried_with_the_same_message_id(smtp, sleep):
    smtp.data_replies = ["451 4.3.0 Temporary failure"]
    campaign = create_campaign("Hi", "Body", addresses(2))

    send_campaign(campaign, sleep=sleep)

    assert smtp.received() == {address: 1 for address in addresses(2)}
    first, retry, second = smtp.attempted_message_ids
    # Stable per delivery, so a receiver can spot a copy re-sent after a lost reply.
    first_pk = campaign.deliveries.order_by("pk").first().pk
    assert first == retry
    assert first.startswith(f"<edupulse.{campaign.id}.{first_pk}@")
    assert second != first


def test_permanent_rejection_is_failed_and_not_retried(smtp, sleep):
    recipients = addresses(4)
    bad = recipients[1]
    smtp.rejected = {bad: "550 5.1.1 No such user"}
    campaign = create_campaign("Hi", "Body", recipients)

    run = send_campaign(campaign, sleep=sleep)

    assert smtp.rcpt_count[bad] == 1
    assert smtp.received() == {a: 1 for a in recipients if a != bad}
    delivery = campaign.deliveries.get(recipient=bad)
    assert delivery.status == "failed"
    assert delivery.attempts == 1
    assert "550" in delivery.last_error and "No such user" in delivery.last_error
    assert run.counts == {"pending": 0, "sent": 3, "failed": 1}
    assert sleep.calls == []


def test_invalid_address_is_failed_without_contacting_the_server(smtp, sleep):
    campaign = create_campaign("Hi", "Body", ["not-an-address", "ok@school.test"])

    send_campaign(campaign, sleep=sleep)

    assert statuses(campaign) == {"not-an-address": "failed", "ok@school.test": "sent"}
    assert "invalid address" in campaign.deliveries.get(recipient="not-an-address").last_error
    assert smtp.rcpt_count["not-an-address"] == 0


def test_dropped_connection_mid_batch_resends_only_the_unaccepted_message(smtp, sleep):
    recipients = addresses(6)
    smtp.drop_at_data = {3}  # the third message is cut off before the server accepts it
    campaign = create_campaign("Hi", "Body", recipients)

    run = send_campaign(campaign, sleep=sleep)

    assert smtp.received() == {address: 1 for address in recipients}
    assert smtp.data_count == 7  # six messages plus the one retried
    assert smtp.ehlo_count == 2  # the reconnect after the drop
    assert campaign.deliveries.get(recipient=recipients[2]).attempts == 2
    assert run.counts["sent"] == 6


class DiesAfter:
    """Wraps a real connection and 'kills the process' (raises) on send number `n`."""

    def __init__(self, connection, n: int) -> None:
        self.connection = connection
        self.n = n
        self.calls = 0

    def open(self):
        return self.connection.open()

    def close(self):
        return self.connection.close()

    def send_messages(self, messages):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("worker killed")
        return self.connection.send_messages(messages)


def test_crash_mid_batch_then_rerun_sends_nobody_twice(smtp, sleep):
    recipients = addresses(5)
    campaign = create_campaign("Hi", "Body", recipients)
    ids = list(campaign.deliveries.values_list("pk", flat=True))

    with pytest.raises(KeyboardInterrupt):
        send_deliveries(ids, DiesAfter(get_connection(), 3), sleep=sleep)

    assert statuses(campaign) == dict(zip(recipients, ["sent", "sent", "pending", "pending", "pending"]))
    result = send_deliveries(ids, sleep=sleep)  # the later run

    assert result.sent == 3
    assert smtp.received() == {address: 1 for address in recipients}


def test_two_executions_of_one_task_never_free_each_others_claims(smtp, sleep):
    """A redelivered Celery task (or a retry of it) runs under the same task id as a copy that is
    still sending. Each execution must hold claims of its own: if the copy that finishes first
    released the claims by the shared name, a third execution could take the recipient that the
    first is sending right now, and send it again."""
    campaign = create_campaign("Hi", "Body", addresses(3))
    ids = list(campaign.deliveries.order_by("pk").values_list("pk", flat=True))
    connection = get_connection(fail_silently=False)
    send_messages = connection.send_messages
    nested: list = []

    def send_while_two_copies_run(messages):
        if not nested:  # while the first message is in flight
            nested.append(send_deliveries(ids, sleep=sleep, runner="celery:task-1"))
            nested.append(send_deliveries(ids, sleep=sleep, runner="celery:task-1"))
        return send_messages(messages)

    connection.send_messages = send_while_two_copies_run
    send_deliveries(ids, connection, sleep=sleep, runner="celery:task-1")

    assert smtp.received() == {address: 1 for address in addresses(3)}
    # The first execution claimed its whole batch; the copy that ended first released only its
    # own (none), so the next one still found all three held.
    assert [(result.sent, result.busy) for result in nested] == [(0, 3), (0, 3)]
    assert set(statuses(campaign).values()) == {"sent"}


def test_a_claim_of_a_killed_process_on_this_host_is_taken_over_at_once(smtp, sleep):
    """A killed Celery pool child's task comes back at once; its recipient must not wait out the
    claim timeout. A live holder's claim (this process) is left alone."""
    import subprocess

    from bulk_email.claims import machine_identity

    campaign = create_campaign("Hi", "Body", addresses(2))
    dead, alive = campaign.deliveries.order_by("pk")
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = machine_identity()
    Delivery.objects.filter(pk=dead.pk).update(
        claimed_by=f"celery:task-1#{host}:{gone.pid}:abcd", claimed_at=timezone.now())
    Delivery.objects.filter(pk=alive.pk).update(
        claimed_by=f"celery:task-2#{host}:{os.getpid()}:abcd", claimed_at=timezone.now())

    result = send_deliveries([dead.pk, alive.pk], sleep=sleep, runner="celery:task-1")

    assert smtp.received() == {dead.recipient: 1}
    assert result.sent == 1
    assert dict(statuses(campaign)) == {dead.recipient: "sent", alive.recipient: "pending"}


def test_persistent_outage_leaves_deliveries_pending_and_stops(smtp, settings, sleep):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 3
    smtp.mail_replies = ["421 4.3.2 Service shutting down"] * 100
    recipients = addresses(10)
    campaign = create_campaign("Hi", "Body", recipients)

    run = send_campaign(campaign, sleep=sleep)

    assert run.counts == {"pending": 10, "sent": 0, "failed": 0}
    assert "SMTP server unavailable" in run.stopped
    tried = campaign.deliveries.filter(attempts=3)
    assert tried.count() == OUTAGE_AFTER
    assert all("421" in d.last_error for d in tried)
    assert sleep.calls == [2, 4] * OUTAGE_AFTER

    smtp.mail_replies = []  # the server is back: the next run sends everything once
    run = send_campaign(campaign, sleep=sleep)
    assert run.counts["sent"] == 10
    assert smtp.received() == {address: 1 for address in recipients}


def test_backoff_is_capped(smtp, settings, sleep):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 6
    settings.BULK_EMAIL_RETRY_BACKOFF = 1
    settings.BULK_EMAIL_RETRY_BACKOFF_MAX = 5
    smtp.mail_replies = ["451 busy"] * 5
    campaign = create_campaign("Hi", "Body", addresses(1))

    send_campaign(campaign, sleep=sleep)

    assert sleep.calls == [1, 2, 4, 5, 5]
    assert campaign.deliveries.get().status == "sent"


def test_rejected_login_stops_the_run_and_keeps_everything_pending(smtp, sleep):
    campaign = create_campaign("Hi", "Body", addresses(3))
    ids = list(campaign.deliveries.values_list("pk", flat=True))

    class BadLogin:
        def open(self):
            raise smtplib.SMTPAuthenticationError(535, b"5.7.8 Bad credentials")

        def close(self):
            pass

    with pytest.raises(SmtpConfigurationError, match="SMTP login refused .*535.*EMAIL_HOST_PASSWORD"):
        send_deliveries(ids, BadLogin(), sleep=sleep)

    assert set(statuses(campaign).values()) == {"pending"}
    assert "535" in Delivery.objects.get(pk=ids[0]).last_error


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (smtplib.SMTPServerDisconnected("gone"), "transient"),
        (TimeoutError("timed out"), "transient"),
        (ConnectionRefusedError(111, "refused"), "transient"),
        (smtplib.SMTPSenderRefused(421, b"closing", "a@b"), "transient"),
        (smtplib.SMTPDataError(554, b"spam"), "stop"),
        (smtplib.SMTPSenderRefused(550, b"5.4.5 Daily user sending limit exceeded", "a@b"), "stop"),
        (smtplib.SMTPRecipientsRefused({"a@b": (550, b"no")}), "permanent"),
        (smtplib.SMTPRecipientsRefused({"a@b": (450, b"mailbox busy")}), "transient"),
        (smtplib.SMTPAuthenticationError(535, b"bad"), "fatal"),
        (smtplib.SMTPNotSupportedError("STARTTLS extension not supported"), "fatal"),
    ],
)
def test_classify(exc, kind):
    assert classify(exc) == kind
