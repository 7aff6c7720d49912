"""manage.py batch_sender: batch mode's sender outside the web request (systemd path unit + timer).

Against the loopback SMTP server: each pass removes the spool pokes, sends
every dispatched batch campaign with pending deliveries (oldest first),
leaves held ones alone, and picks up what a transient failure left.
"""
import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from bulk_email import batch_sender
from bulk_email.api import send_bulk_email
from bulk_email.campaigns import create_campaign
from bulk_email.models import Campaign
from edupulse_testproject import build_patched_project

pytestmark = pytest.mark.django_db


def addresses(n: int, prefix: str = "student") -> list[str]:
    return [f"{prefix}{i:03d}@school.test" for i in range(1, n + 1)]


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command("batch_sender", *args, stdout=out)
    return out.getvalue().splitlines()


@pytest.fixture
def fast(smtp, settings):
    """The command uses the real time.sleep: no delay between batches, no backoff."""
    settings.BULK_EMAIL_BATCH_DELAY = 0
    settings.BULK_EMAIL_RETRY_BACKOFF = 0
    return smtp


def submit(recipients: list[str], capture) -> Campaign:
    with capture(execute=True):
        return send_bulk_email("Trip", "Bring lunch.", recipients)


def test_a_pass_sends_the_dispatched_campaigns_and_removes_the_pokes(fast, spool, django_capture_on_commit_callbacks):
    first, second = addresses(25, "first"), addresses(3, "second")
    campaigns = [submit(first, django_capture_on_commit_callbacks), submit(second, django_capture_on_commit_callbacks)]
    (spool / ".stray-poke").touch()  # DirectoryNotEmpty= sees dot files too
    assert len(list(spool.iterdir())) == 3 and fast.messages == []

    lines = run("--json")

    assert lines[0] == "batch sender: 2 campaigns, busy=0 sent=28 failed=0 pending=0"
    assert json.loads(lines[-1]) == {"pokes": 3, "campaigns": 2, "busy": 0, "sent": 28, "failed": 0,
                                     "pending": 0, "stopped": None}
    assert list(spool.iterdir()) == []
    assert fast.received() == {address: 1 for address in first + second}
    assert fast.ehlo_count == 3  # one connection per batch of 20: 2 + 1
    for campaign in campaigns:
        assert campaign.counts()["pending"] == 0
    assert json.loads(run("--json")[-1])["campaigns"] == 0  # nothing left: the next pass sends nobody


def test_oldest_campaign_first(fast, django_capture_on_commit_callbacks):
    older = submit(["old@school.test"], django_capture_on_commit_callbacks)
    newer = submit(["new@school.test"], django_capture_on_commit_callbacks)
    Campaign.objects.filter(pk=older.pk).update(created_at=timezone.now() - timezone.timedelta(hours=1))

    assert [c.pk for c in batch_sender.due_campaigns()] == [older.pk, newer.pk]
    run()
    assert [rcpts for rcpts, _ in fast.messages] == [["old@school.test"], ["new@school.test"]]


def test_held_and_undispatched_campaigns_are_not_taken(fast, settings, tmp_path, django_capture_on_commit_callbacks):
    hold = tmp_path / "queue-switch"
    hold.write_text("batch")
    settings.BULK_EMAIL_HOLD_FILE = str(hold)
    held = submit(addresses(2, "held"), django_capture_on_commit_callbacks)
    hold.unlink()
    other_mode = create_campaign("Hi", "x", ["rq@school.test"])
    Campaign.objects.filter(pk=other_mode.pk).update(mode="rq", dispatched_at=timezone.now())

    assert json.loads(run("--json")[-1])["campaigns"] == 0
    assert fast.messages == []
    assert Campaign.objects.get(pk=held.pk).dispatched_at is None  # still for dispatch-held


def test_leftovers_of_a_transient_failure_are_sent_by_a_later_pass(fast, settings, django_capture_on_commit_callbacks):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    fast.mail_replies = ["421 4.3.2 try later"] * 3  # three recipients in a row: an outage
    campaign = submit(addresses(5), django_capture_on_commit_callbacks)

    lines = run("--json")

    summary = json.loads(lines[-1])
    assert (summary["sent"], summary["pending"]) == (0, 5)
    assert summary["stopped"].startswith("SMTP server unavailable")
    assert any(line.startswith("stopped: SMTP server unavailable") for line in lines)
    assert campaign.counts()["pending"] == 5

    summary = json.loads(run("--json")[-1])  # the timer's next pass, server back

    assert (summary["campaigns"], summary["sent"], summary["pending"]) == (1, 5, 0)
    assert fast.received() == {address: 1 for address in addresses(5)}


def test_a_pass_stops_at_the_quota_and_leaves_the_rest_for_later(fast, settings, django_capture_on_commit_callbacks):
    settings.BULK_EMAIL_DAILY_QUOTA = 2
    first = submit(addresses(3, "first"), django_capture_on_commit_callbacks)
    second = submit(addresses(2, "second"), django_capture_on_commit_callbacks)

    summary = json.loads(run("--json")[-1])

    assert summary["campaigns"] == 1 and summary["stopped"].startswith("daily quota of 2 reached")
    assert first.counts()["pending"] == 1 and second.counts()["pending"] == 2


def test_rejected_login_is_a_one_line_command_error(fast, monkeypatch, django_capture_on_commit_callbacks):
    import smtplib

    submit(addresses(2), django_capture_on_commit_callbacks)

    def rejected(*args, **kwargs):
        raise smtplib.SMTPAuthenticationError(535, b"5.7.8 Username and Password not accepted")

    monkeypatch.setattr("django.core.mail.backends.smtp.EmailBackend.open", rejected)
    with pytest.raises(CommandError, match=r"^SMTP configuration error, nothing more sent: SMTPAuthenticationError: 535"):
        run()


def test_watch_polls_the_spool_every_poll_and_the_ledger_every_interval(fast, spool, django_capture_on_commit_callbacks):
    """--watch with a fake clock: a poke starts a pass at the next poll, the interval does anyway."""
    now = [0.0]
    passes: list[dict] = []
    campaign = {}

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] == 3:
            campaign["a"] = submit(["poked@school.test"], django_capture_on_commit_callbacks)
        if now[0] == 7:  # dispatched, but the poke was lost: the interval pass sends it
            campaign["b"] = create_campaign("Hi", "x", ["timer@school.test"])
            Campaign.objects.filter(pk=campaign["b"].pk).update(dispatched_at=timezone.now())

    batch_sender.watch(
        interval=10, poll=1, sleep=sleep, clock=lambda: now[0],
        on_pass=passes.append, stop=lambda: now[0] >= 14,
    )

    assert [p["sent"] for p in passes] == [0, 1, 1]  # at start, after the poke (t=3), 10 s after that pass (t=13)
    assert fast.received() == {"poked@school.test": 1, "timer@school.test": 1}
    assert list(spool.iterdir()) == []


def test_batch_sender_through_manage_py_exit_codes(smtp_server, tmp_path):
    """As systemd runs it: its own process, env-configured; log lines on stderr; exit 0, or 1 on
    a fatal configuration error without a traceback."""
    project = build_patched_project(tmp_path, mode="batch")
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {
        **os.environ, "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "PYTHONPATH": "",
        "EMAIL_PORT": str(smtp_server.port), "BULK_EMAIL_BATCH_DELAY": "0",
        "BULK_EMAIL_QUEUE_MODE": "batch", "BULK_EMAIL_BATCH_SPOOL_DIR": str(spool),
    }

    def manage(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=project, env={**env, **extra},
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert manage("migrate", "-v0").returncode == 0
    code = ("from bulk_email.api import send_bulk_email; "
            "print(send_bulk_email('Hi', 'x', ['a@x.test', 'b@x.test']).id)")
    created = manage("shell", "-c", code)
    assert created.returncode == 0, created.stderr
    campaign_id = created.stdout.split()[-1]
    assert [path.name for path in spool.iterdir()] == [campaign_id] and smtp_server.messages == []

    sent = manage("batch_sender", "--json")

    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout.splitlines()[-1])["sent"] == 2
    assert smtp_server.received() == {"a@x.test": 1, "b@x.test": 1}
    assert "batch email sender pass" in sent.stderr
    assert list(spool.iterdir()) == []

    manage("shell", "-c", code)
    refused = manage("batch_sender", EMAIL_HOST_USER="user", EMAIL_HOST_PASSWORD="wrong")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("CommandError: SMTP configuration error")


def test_a_campaign_another_runner_is_sending_is_left_to_it(fast, django_capture_on_commit_callbacks):
    """send_campaign in a shell marks its campaign dispatched before sending: a timer pass meanwhile
    must not send it in parallel (the provider would see twice the rate)."""
    from datetime import timedelta

    from bulk_email.models import Delivery

    campaign = submit(addresses(3), django_capture_on_commit_callbacks)
    first = campaign.deliveries.order_by("pk").first()
    Delivery.objects.filter(pk=first.pk).update(claimed_by="host:1#other", claimed_at=timezone.now())

    summary = json.loads(run("--json")[-1])

    assert (summary["campaigns"], summary["busy"]) == (0, 1) and fast.messages == []
    Delivery.objects.filter(pk=first.pk).update(
        status="sent", claimed_at=None, sent_at=timezone.now())  # between two of its batches
    assert json.loads(run("--json")[-1])["busy"] == 1
    Delivery.objects.filter(pk=first.pk).update(sent_at=timezone.now() - timedelta(minutes=1))  # it ended

    summary = json.loads(run("--json")[-1])

    assert (summary["campaigns"], summary["busy"], summary["sent"]) == (1, 0, 2)
