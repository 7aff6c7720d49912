"""The ledger's exactly-once promise under adversarial timing (a review's probes, one test each).

Each test stages the interleaving the review found with a real SMTP server
on loopback: a runner whose claim was taken over while it worked, an
account-level refusal, a late reply to the final dot, a long host name on
PostgreSQL, a cloned machine, a host whose clock runs fast.
"""
import smtplib
import subprocess
from datetime import timedelta

import pytest
from django.core.mail import get_connection
from django.utils import timezone

from bulk_email.campaigns import create_campaign
from bulk_email.models import Delivery
from bulk_email.sending import send_campaign, send_deliveries

pytestmark = pytest.mark.django_db


def addresses(n: int) -> list[str]:
    return [f"student{i:03d}@school.test" for i in range(1, n + 1)]


def statuses(campaign) -> dict[str, str]:
    return dict(campaign.deliveries.values_list("recipient", "status"))


def expire_claims(campaign) -> None:
    """What a claim looks like once BULK_EMAIL_CLAIM_TIMEOUT has passed since its last refresh."""
    campaign.deliveries.filter(claimed_at__isnull=False).update(
        claimed_at=timezone.now() - timedelta(days=1))


def test_a_stale_sender_never_overwrites_the_ledger_of_the_runner_that_took_over(smtp, sleep):
    """Runner A's attempt outlasts its claim; B takes the claim over and sends; A's attempt then
    fails (a timeout). A's mark must not turn B's SENT back into PENDING and send again."""
    campaign = create_campaign("Hi", "Body", addresses(1))
    ids = list(campaign.deliveries.values_list("pk", flat=True))
    connection = get_connection(fail_silently=False)
    real_send = connection.send_messages
    calls: list = []

    def slow_attempt(messages):
        if not calls:
            calls.append(1)
            expire_claims(campaign)  # A is still inside its first attempt
            calls.append(send_deliveries(ids, sleep=sleep, runner="rq:job-B"))
            raise TimeoutError("timed out")  # A's attempt ends without a reply
        return real_send(messages)

    connection.send_messages = slow_attempt
    result = send_deliveries(ids, connection, sleep=sleep, runner="rq:job-A")

    assert calls[1].sent == 1
    assert smtp.received() == {addresses(1)[0]: 1}
    assert statuses(campaign) == {addresses(1)[0]: "sent"}
    assert (result.sent, result.busy) == (0, 1)  # A counts the delivery as lost, not deferred


def test_a_sender_whose_claim_was_taken_during_the_backoff_does_not_send_again(smtp, sleep):
    smtp.mail_replies = ["421 4.7.0 Try again later"]
    campaign = create_campaign("Hi", "Body", addresses(1))
    ids = list(campaign.deliveries.values_list("pk", flat=True))
    other: list = []

    def backoff_outlasting_the_claim(seconds):
        sleep(seconds)
        expire_claims(campaign)
        other.append(send_deliveries(ids, sleep=sleep, runner="rq:job-B"))

    result = send_deliveries(ids, sleep=backoff_outlasting_the_claim, runner="rq:job-A")

    assert other[0].sent == 1
    assert smtp.received() == {addresses(1)[0]: 1}
    assert (result.sent, result.busy) == (0, 1)


def test_a_live_senders_claims_outlast_a_batch_longer_than_the_claim_timeout(smtp, settings, sleep):
    """The batch is claimed in one statement; the server answers each message slowly, so the batch
    outlasts BULK_EMAIL_CLAIM_TIMEOUT although each attempt is well within it. After every message
    (between the server's 250 and the sender's mark, the worst moment) a second runner tries to
    take the batch over: it must find every claim still held, none expired."""
    settings.BULK_EMAIL_CLAIM_TIMEOUT = 3
    smtp.data_delay = 1.0
    recipients = addresses(5)
    assert smtp.data_delay < settings.BULK_EMAIL_CLAIM_TIMEOUT < smtp.data_delay * len(recipients)
    campaign = create_campaign("Hi", "Body", recipients)
    ids = list(campaign.deliveries.order_by("pk").values_list("pk", flat=True))
    connection = get_connection(fail_silently=False)
    real_send = connection.send_messages
    takeovers: list = []

    def send_then_let_another_runner_try(messages):
        accepted = real_send(messages)
        takeovers.append(send_deliveries(ids, sleep=sleep, runner="rq:job-B"))
        return accepted

    connection.send_messages = send_then_let_another_runner_try
    result = send_deliveries(ids, connection, sleep=sleep, runner="rq:job-A")

    assert smtp.received() == {address: 1 for address in recipients}
    assert (result.sent, result.busy) == (5, 0)
    # B found the current recipient and every later one of the batch held by A, and sent none.
    assert [(other.sent, other.busy) for other in takeovers] == [(0, 5), (0, 4), (0, 3), (0, 2), (0, 1)]
    senders = campaign.deliveries.values_list("claimed_by", flat=True)
    assert all(name.startswith("rq:job-A#") for name in senders), list(senders)


@pytest.mark.parametrize(
    ("where", "reply"),
    [
        ("mail", "550 5.4.5 Daily user sending limit exceeded"),
        ("mail", "530 5.7.0 Authentication required"),
        ("mail", "553 5.7.1 Sender address rejected: not owned by user"),
        ("data", "552 5.3.4 Message size exceeds fixed limit"),
    ],
)
def test_an_account_level_refusal_stops_the_run_and_leaves_everyone_pending(smtp, sleep, where, reply):
    setattr(smtp, f"{where}_replies", [reply] * 100)
    campaign = create_campaign("Hi", "Body", addresses(5))

    run = send_campaign(campaign, sleep=sleep)

    assert run.counts == {"pending": 5, "sent": 0, "failed": 0}
    assert reply.split()[0] in run.stopped
    assert "pending" in run.stopped
    assert campaign.deliveries.filter(attempts__gt=0).count() == 1  # stopped after the first


def test_a_refused_recipient_is_still_failed_on_its_own(smtp, sleep):
    smtp.rejected = {"student002@school.test": "550 5.1.1 No such user"}
    campaign = create_campaign("Hi", "Body", addresses(3))

    run = send_campaign(campaign, sleep=sleep)

    assert run.counts == {"pending": 0, "sent": 2, "failed": 1}
    assert run.stopped is None


def test_a_late_reply_to_the_final_dot_is_awaited_not_resent(smtp, settings, sleep):
    """RFC 5321 4.5.3.2.6 gives the server 10 minutes to answer the final dot; a timeout there
    and a retry would mail the recipient twice."""
    settings.EMAIL_TIMEOUT = 1
    settings.BULK_EMAIL_DATA_REPLY_TIMEOUT = 30
    smtp.data_delay = 2.5  # longer than EMAIL_TIMEOUT, well within the data reply timeout
    campaign = create_campaign("Hi", "Body", addresses(1))

    run = send_campaign(campaign, sleep=sleep)

    assert smtp.data_count == 1
    assert run.counts["sent"] == 1


def test_another_machine_with_the_same_host_name_keeps_its_live_claim(smtp, sleep, monkeypatch):
    """Cloned VMs share a host name; a pid that is gone here may be alive on the clone."""
    from bulk_email import claims

    campaign = create_campaign("Hi", "Body", addresses(1))
    gone = subprocess.Popen(["true"])
    gone.wait()
    monkeypatch.setattr(claims, "machine_identity", lambda: "clone0000000")
    monkeypatch.setattr(claims.os, "getpid", lambda: gone.pid)
    token = claims.execution_token()
    monkeypatch.undo()
    campaign.deliveries.update(claimed_by=f"celery:task-1#{token}", claimed_at=timezone.now())

    result = send_deliveries(list(campaign.deliveries.values_list("pk", flat=True)), sleep=sleep)

    assert result.busy == 1
    assert smtp.received() == {}
    assert claims.machine_identity() not in token


def test_a_host_whose_clock_runs_fast_does_not_expire_a_live_claim(smtp, settings, sleep, monkeypatch):
    settings.BULK_EMAIL_CLAIM_TIMEOUT = 600
    campaign = create_campaign("Hi", "Body", addresses(1))
    ids = list(campaign.deliveries.values_list("pk", flat=True))
    connection = get_connection(fail_silently=False)
    real_send = connection.send_messages
    other: list = []

    def send_while_a_fast_clock_looks(messages):
        if not other:
            fast = timezone.now() + timedelta(hours=1)
            with monkeypatch.context() as patch:
                patch.setattr(timezone, "now", lambda: fast)
                other.append(send_deliveries(ids, sleep=sleep, runner="rq:fast-clock"))
        return real_send(messages)

    connection.send_messages = send_while_a_fast_clock_looks
    send_deliveries(ids, connection, sleep=sleep, runner="rq:live")

    assert other[0].busy == 1
    assert smtp.received() == {addresses(1)[0]: 1}


@pytest.mark.django_db(databases=["default", "postgres"], transaction=True)
def test_claim_names_fit_the_column_on_postgresql_with_a_long_host_name(smtp, sleep, on_postgres, monkeypatch):
    """claimed_by is varchar(128); a Celery claim name is ~84 characters before the host part,
    and a host name may have 64 (SQLite never enforces the length, PostgreSQL does)."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 63)
    campaign = create_campaign("Hi", "Body", addresses(2))
    ids = list(Delivery.objects.filter(campaign=campaign).values_list("pk", flat=True))
    task_id = f"bulk_email-{campaign.id}-12-0123abcd"

    result = send_deliveries(ids, sleep=sleep, runner=f"celery:{task_id}")

    assert on_postgres.vendor == "postgresql"
    assert result.sent == 2
    assert smtp.received() == {address: 1 for address in addresses(2)}
    assert all(len(name) <= 128 for name in Delivery.objects.values_list("claimed_by", flat=True))


@pytest.mark.django_db(databases=["default", "postgres"], transaction=True)
def test_the_daily_quota_holds_across_concurrent_senders_on_postgresql(smtp, settings, on_postgres):
    """Eight runners (threads, each with its own PostgreSQL connection) start at one barrier; the
    quota is reserved with the claims, so together they send exactly the limit, never more."""
    import threading

    from django.db import connections

    settings.BULK_EMAIL_DAILY_QUOTA = 10
    runners = 8
    campaigns = [create_campaign(f"C{n}", "Body", [f"r{n}-{i}@school.test" for i in range(5)])
                 for n in range(runners)]
    batches = [list(Delivery.objects.filter(campaign=c).values_list("pk", flat=True)) for c in campaigns]
    barrier = threading.Barrier(runners)
    errors: list[BaseException] = []

    def sender(ids):
        try:
            barrier.wait()
            send_deliveries(ids, sleep=lambda seconds: None, runner="thread")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sender, args=(ids,)) for ids in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Delivery.objects.filter(status="sent").count() == 10
    assert sum(smtp.received().values()) == 10


class CountingRefusedLogin:
    """An email backend whose logins are refused (535), counting how often one is tried."""

    logins = 0

    def __init__(self, **kwargs):
        pass

    def open(self):
        type(self).logins += 1
        raise smtplib.SMTPAuthenticationError(535, b"5.7.8 Username and Password not accepted")

    def close(self):
        pass


def test_a_refused_login_is_not_tried_again_by_later_batches_until_the_configuration_changes(
    smtp, settings, sleep
):
    """rq retries a failed job, Celery runs the campaign's other batches: each one logging in
    again with a wrong password gets the account locked. One refusal stops them all."""
    from bulk_email.sending import SmtpConfigurationError

    settings.EMAIL_BACKEND = f"{__name__}.CountingRefusedLogin"
    CountingRefusedLogin.logins = 0
    campaign = create_campaign("Hi", "Body", addresses(3))
    batches = [[pk] for pk in campaign.deliveries.order_by("pk").values_list("pk", flat=True)]

    with pytest.raises(SmtpConfigurationError):
        send_deliveries(batches[0], sleep=sleep, runner="rq:job-1")
    later = [send_deliveries(batch, sleep=sleep, runner="rq:job-n") for batch in batches[1:]]

    assert CountingRefusedLogin.logins == 1
    assert all("SMTP login was refused" in result.stopped for result in later)
    assert campaign.counts()["pending"] == 3
    settings.EMAIL_HOST_PASSWORD = "the-corrected-password"  # a new configuration is tried again
    with pytest.raises(SmtpConfigurationError):
        send_deliveries(batches[1], sleep=sleep, runner="rq:job-2")
    assert CountingRefusedLogin.logins == 2


@pytest.mark.django_db(databases=["default", "postgres"], transaction=True)
@pytest.mark.parametrize(
    "probe",
    [
        test_a_stale_sender_never_overwrites_the_ledger_of_the_runner_that_took_over,
        test_a_sender_whose_claim_was_taken_during_the_backoff_does_not_send_again,
        test_a_live_senders_claims_outlast_a_batch_longer_than_the_claim_timeout,
        test_another_machine_with_the_same_host_name_keeps_its_live_claim,
        test_a_host_whose_clock_runs_fast_does_not_expire_a_live_claim,
        test_a_refused_recipient_is_still_failed_on_its_own,
    ],
    ids=lambda probe: probe.__name__.removeprefix("test_"),
)
def test_the_claim_probes_hold_on_postgresql_too(probe, request, on_postgres):
    """The same probes against PostgreSQL (row locks, its own clock, varchar limits)."""
    import inspect

    assert on_postgres.vendor == "postgresql"
    probe(**{name: request.getfixturevalue(name) for name in inspect.signature(probe).parameters})
