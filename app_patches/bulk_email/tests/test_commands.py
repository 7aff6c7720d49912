"""The operator commands send_campaign and campaign_status, and their parseable output."""
import json
import os
import subprocess
import sys
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from bulk_email.models import Campaign
from edupulse_testproject import build_patched_project

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast(smtp, settings):
    """SMTP server plus no delay, since the commands use the real time.sleep."""
    settings.BULK_EMAIL_BATCH_DELAY = 0
    return smtp


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().splitlines()


def test_send_campaign_from_options_and_file(fast, tmp_path):
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("# class 3b\nc@school.test\n\n  d@school.test  \nA@school.test\n")
    body = tmp_path / "body.txt"
    body.write_text("Dear students,\n...")
    html = tmp_path / "body.html"
    html.write_text("<p>Dear students</p>")

    lines = run(
        "send_campaign", "--subject", "Exams", "--body-file", str(body), "--html-file", str(html),
        "--to", "a@school.test", "--to", "b@school.test", "--recipients-file", str(recipients),
        "--from", "office@school.test", "--json",
    )

    campaign_id = lines[0].removeprefix("campaign ")
    campaign = Campaign.objects.get(pk=campaign_id)
    assert lines[1] == "mode=batch recipients=4 sent=4 failed=0 pending=0"
    assert json.loads(lines[-1]) == {
        "id": campaign_id, "mode": "batch", "recipients": 4, "sent": 4, "failed": 0, "pending": 0,
        "held": False,
    }
    assert campaign.dispatched_at is not None
    assert sorted(fast.received()) == ["a@school.test", "b@school.test", "c@school.test", "d@school.test"]
    assert campaign.from_email == "office@school.test"
    assert campaign.body == "Dear students,\n..."
    assert campaign.html_body == "<p>Dear students</p>"


def test_send_campaign_reports_failures_and_stop_reason(fast, settings):
    settings.BULK_EMAIL_DAILY_QUOTA = 1
    fast.rejected = {"bad@school.test": "550 5.1.1 unknown"}

    lines = run(
        "send_campaign", "--subject", "Hi", "--body", "x",
        "--to", "bad@school.test", "--to", "ok@school.test", "--to", "later@school.test", "--json",
    )

    assert lines[1] == "mode=batch recipients=3 sent=1 failed=1 pending=1"
    assert lines[2].startswith("stopped: daily quota of 1 reached")
    assert json.loads(lines[-1])["pending"] == 1


def test_resume_sends_only_pending_deliveries(fast, settings):
    settings.BULK_EMAIL_DAILY_QUOTA = 1
    first = run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "a@x.test", "--to", "b@x.test")
    campaign_id = first[0].removeprefix("campaign ")
    settings.BULK_EMAIL_DAILY_QUOTA = 0

    lines = run("send_campaign", "--resume", campaign_id, "--json")

    assert lines[0] == f"campaign {campaign_id}"
    assert json.loads(lines[-1])["sent"] == 2
    assert fast.received() == {"a@x.test": 1, "b@x.test": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--body", "x", "--to", "a@x.test"], "--subject is required"),
        (["--subject", "Hi", "--to", "a@x.test"], "--body or --body-file is required"),
        (["--subject", "Hi", "--body", "x"], "at least one recipient"),
        (["--subject", "Hi", "--body", "x", "--recipients-file", "/nonexistent"], "cannot read recipients file"),
        (["--resume", str(uuid.uuid4())], "unknown campaign"),
    ],
)
def test_send_campaign_usage_errors(fast, args, message):
    with pytest.raises(CommandError, match=message):
        run("send_campaign", *args)
    assert fast.messages == []


def test_campaign_status(fast):
    fast.rejected = {"bad@x.test": "550 no"}
    lines = run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "ok@x.test", "--to", "bad@x.test")
    campaign_id = lines[0].removeprefix("campaign ")

    assert run("campaign_status", campaign_id) == [
        f"campaign {campaign_id} mode=batch recipients=2 sent=1 failed=1 pending=0 sending=0"
    ]
    assert json.loads(run("campaign_status", campaign_id, "--json")[-1]) == {
        "id": campaign_id, "mode": "batch", "recipients": 2, "pending": 0, "sent": 1, "failed": 1,
        "sending": 0, "dispatched": True,
    }


def test_campaign_status_of_a_mode_no_longer_deployed_reports_the_ledger(fast, settings):
    """After a queue mode switch, old campaigns are still readable: their queue (and its client
    library) may be gone, so only the ledger is asked."""
    settings.BULK_EMAIL_QUEUE_MODE = "batch"
    lines = run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "ok@x.test")
    campaign_id = lines[0].removeprefix("campaign ")
    Campaign.objects.filter(pk=campaign_id).update(mode="celery")  # as sent before a switch

    assert json.loads(run("campaign_status", campaign_id, "--json")[-1]) == {
        "id": campaign_id, "mode": "celery", "recipients": 1, "pending": 0, "sent": 1, "failed": 0,
        "sending": 0, "dispatched": True,
    }


def test_retry_failed_in_batch_mode_resends_pending_deliveries(fast, settings):
    assert run("retry_failed") == ["nothing to retry"]
    settings.BULK_EMAIL_DAILY_QUOTA = 1
    run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "a@x.test", "--to", "b@x.test")
    settings.BULK_EMAIL_DAILY_QUOTA = 0

    dry = run("retry_failed", "--dry-run", "--json")
    assert dry[0] == "would retry 1 campaigns (1 pending deliveries)"
    assert fast.received() == {"a@x.test": 1}

    lines = run("retry_failed", "--json")

    assert json.loads(lines[-1]) == {
        "mode": "batch", "dry_run": False, "campaigns": 1, "deliveries": 1, "retried": 1,
    }
    assert fast.received() == {"a@x.test": 1, "b@x.test": 1}
    assert run("retry_failed") == ["nothing to retry"]


@pytest.mark.parametrize("campaign_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_campaign_status_unknown_id(campaign_id):
    with pytest.raises(CommandError, match="unknown campaign"):
        run("campaign_status", campaign_id)


def test_commands_through_manage_py_exit_codes(smtp_server, tmp_path):
    """As the operator runs them: separate processes, env-configured, real exit codes.

    On a copy patched for batch mode (the shared test project is patched for rq).
    """
    project = build_patched_project(tmp_path, mode="batch")
    env = {
        **os.environ,
        "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        "EMAIL_PORT": str(smtp_server.port),
        "BULK_EMAIL_BATCH_DELAY": "0",
        "BULK_EMAIL_QUEUE_MODE": "batch",
        "PYTHONPATH": "",
    }

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=project, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert manage("migrate", "-v0").returncode == 0
    sent = manage("send_campaign", "--subject", "Hi", "--body", "x", "--to", "a@x.test", "--json")
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout.splitlines()[-1])
    assert summary["sent"] == 1 and smtp_server.received() == {"a@x.test": 1}
    assert "batch email campaign=" in sent.stderr  # the log line operators grep in journald

    status = manage("campaign_status", summary["id"], "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["sent"] == 1
    unknown = manage("campaign_status", str(uuid.uuid4()))
    assert unknown.returncode == 1
    assert "unknown campaign" in unknown.stderr


def stdin_of(monkeypatch, text: str) -> None:
    """Standard input as the edupulse-manage wrapper feeds it (bytes, UTF-8)."""
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))


@pytest.mark.parametrize("option", ["--body-file", "--html-file", "--recipients-file"])
def test_send_campaign_reads_one_file_from_stdin(fast, monkeypatch, tmp_path, option):
    files = {"--body-file": "Grüße,\n...", "--html-file": "<p>Grüße</p>", "--recipients-file": "a@x.test\n# x\nb@x.test\n"}
    args = ["send_campaign", "--subject", "Hi"]
    for flag, text in files.items():
        if flag == option:
            args += [flag, "-"]
            stdin_of(monkeypatch, text)
        else:
            path = tmp_path / flag.strip("-")
            path.write_text(text, encoding="utf-8")
            args += [flag, str(path)]

    campaign = Campaign.objects.get(pk=run(*args)[0].removeprefix("campaign "))

    assert (campaign.body, campaign.html_body) == ("Grüße,\n...", "<p>Grüße</p>")
    assert sorted(campaign.deliveries.values_list("recipient", flat=True)) == ["a@x.test", "b@x.test"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--body-file", "-", "--recipients-file", "-"], "only one of --body-file, --recipients-file can be -"),
        (["--body-file", "-", "--html-file", "-", "--to", "a@x.test"], "only one of --body-file, --html-file can be -"),
        (["--body-file", "/nonexistent/body.txt", "--to", "a@x.test"],
         "cannot read body file /nonexistent/body.txt: No such file or directory"),
        (["--body", "x", "--html-file", "/", "--to", "a@x.test"], "cannot read HTML file /: Is a directory"),
        (["--body", "x", "--recipients-file", "LATIN1"], "cannot read recipients file .*: not UTF-8 text"),
    ],
)
def test_send_campaign_file_errors_are_clear_and_create_nothing(fast, monkeypatch, tmp_path, args, message):
    (tmp_path / "LATIN1").write_bytes("caf\xe9@x.test\n".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    stdin_of(monkeypatch, "a@x.test\n")
    with pytest.raises(CommandError, match=message):
        run("send_campaign", "--subject", "Hi", *args)
    assert Campaign.objects.count() == 0 and fast.messages == []


def test_send_campaign_says_how_leftovers_go_out_and_leaves_them_to_the_batch_sender(fast, settings):
    settings.BULK_EMAIL_DAILY_QUOTA = 1
    lines = run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "a@x.test", "--to", "b@x.test",
                "--to", "c@x.test")
    campaign_id = lines[0].removeprefix("campaign ")

    assert lines[-1].startswith("2 deliveries left pending (daily quota of 1 reached")
    assert lines[-1].endswith(f"`send_campaign --resume {campaign_id}` sends them now")
    assert Campaign.objects.get(pk=campaign_id).dispatched_at is not None
    settings.BULK_EMAIL_DAILY_QUOTA = 0

    call_command("batch_sender", stdout=StringIO())  # what the timer runs a minute later

    assert fast.received() == {"a@x.test": 1, "b@x.test": 1, "c@x.test": 1}


def test_send_campaign_without_leftovers_prints_no_pending_line(fast):
    lines = run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "a@x.test")
    assert not any("left pending" in line for line in lines)


def test_send_campaign_prints_the_guidance_line_once_above_50_batch_recipients(fast, tmp_path):
    recipients = tmp_path / "r.txt"
    recipients.write_text("".join(f"s{i}@x.test\n" for i in range(51)))

    lines = run("send_campaign", "--subject", "Hi", "--body", "x", "--recipients-file", str(recipients))

    guidance = [line for line in lines if line.startswith("Batch mode:")]
    assert guidance == [
        "Batch mode: 51 recipients; for more than 50 the rq or celery mode sends faster and retries "
        "in the background (site.yml -e queue_mode=rq)"
    ]
    assert lines[2] == "mode=batch recipients=51 sent=51 failed=0 pending=0"  # advice, not a refusal
    recipients.write_text("".join(f"t{i}@x.test\n" for i in range(50)))
    lines = run("send_campaign", "--subject", "Hi", "--body", "x", "--recipients-file", str(recipients))
    assert not any(line.startswith("Batch mode:") for line in lines)


def test_retry_failed_include_failed_resends_failed_deliveries_once(fast):
    fast.rejected = {"bad@x.test": "550 5.1.1 unknown"}
    run("send_campaign", "--subject", "Hi", "--body", "x", "--to", "ok@x.test", "--to", "bad@x.test")
    fast.rejected = {}  # the address was fixed at the provider

    assert run("retry_failed") == ["nothing to retry"]  # failed rows are not retried by default
    dry = run("retry_failed", "--include-failed", "--dry-run", "--json")
    assert dry[0] == "1 failed deliveries would make pending again"
    assert json.loads(dry[-1]) == {"mode": "batch", "dry_run": True, "campaigns": 1, "deliveries": 1,
                                   "retried": 0, "revived": 1}
    assert Campaign.objects.get().counts()["failed"] == 1

    lines = run("retry_failed", "--include-failed", "--json")

    assert lines[0] == "1 failed deliveries made pending again"
    assert json.loads(lines[-1])["retried"] == 1
    assert fast.received() == {"ok@x.test": 1, "bad@x.test": 1}
    assert Campaign.objects.get().counts() == {"pending": 0, "sent": 2, "failed": 0}
