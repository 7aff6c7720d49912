"""smtp_sink.py and count_deliveries.py, run as the systemd unit runs them."""
import json
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parents[1] / "files"
SINK = FILES / "smtp_sink.py"
COUNT = FILES / "count_deliveries.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smtp_sink.py exited: {process.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"smtp_sink.py did not listen on {port}")


@pytest.fixture
def sink(tmp_path):
    port = free_port()
    maildir = tmp_path / "Maildir"
    fault = tmp_path / "fault"
    process = subprocess.Popen(
        [sys.executable, str(SINK), "--host", "127.0.0.1", "--port", str(port),
         "--maildir", str(maildir), "--fault-file", str(fault)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        yield {"port": port, "maildir": maildir, "fault": fault, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=10)


def send(port: int, to: str, campaign: str | None, login: bool = False) -> None:
    message = EmailMessage()
    message["From"] = "office@school.test"
    message["To"] = to
    message["Subject"] = "Hello"
    if campaign:
        message["X-EduPulse-Campaign"] = campaign
    message.set_content("Body")
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        if login:
            client.login("anyone", "anything")
        client.send_message(message)


def count(maildir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(COUNT), "--maildir", str(maildir)],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return json.loads(result.stdout)


def test_messages_are_stored_and_counted_per_campaign(sink):
    send(sink["port"], "a@school.test", "c-1")
    send(sink["port"], "b@school.test", "c-1", login=True)
    send(sink["port"], "A@School.test", "c-1")  # a duplicate, whatever the case
    send(sink["port"], "a@school.test", "c-2")
    send(sink["port"], "x@school.test", None)

    assert len(list((sink["maildir"] / "new").iterdir())) == 5
    assert list((sink["maildir"] / "tmp").iterdir()) == []
    assert count(sink["maildir"]) == {
        "total": 5,
        "by_campaign": {
            "c-1": {"messages": 3, "unique_recipients": 2, "duplicates": ["a@school.test"]},
            "c-2": {"messages": 1, "unique_recipients": 1, "duplicates": []},
            "none": {"messages": 1, "unique_recipients": 1, "duplicates": []},
        },
    }


@pytest.mark.parametrize("code", ["421", "451"])
def test_fault_file_refuses_messages_until_removed(sink, code):
    sink["fault"].write_text(f"{code}\n")
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        send(sink["port"], "a@school.test", "c-1")
    assert refused.value.smtp_code == int(code)

    sink["fault"].unlink()
    send(sink["port"], "a@school.test", "c-1")

    assert count(sink["maildir"])["total"] == 1


def test_a_permanent_fault_refuses_each_recipient_at_rcpt(sink):
    """A 5xx is how a provider refuses a mailbox: at RCPT, so the sender fails that recipient
    (a 5xx at DATA would be a refusal of the message or the account, which stops a run)."""
    sink["fault"].write_text("550\n")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(sink["port"], "a@school.test", "c-1")
    assert [code for code, _ in refused.value.recipients.values()] == [550]

    sink["fault"].unlink()
    send(sink["port"], "a@school.test", "c-1")

    assert count(sink["maildir"])["total"] == 1


def test_stall_delays_recipients_and_a_client_gone_meanwhile_leaves_nothing(sink):
    sink["fault"].write_text("stall 2\n")
    client = smtplib.SMTP("127.0.0.1", sink["port"], timeout=0.5)
    client.ehlo()
    client.mail("office@school.test")
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):  # gives up while stalled
        client.rcpt("a@school.test")
    client.close()
    sink["fault"].unlink()
    send(sink["port"], "b@school.test", "c-1")

    assert count(sink["maildir"])["by_campaign"] == {
        "c-1": {"messages": 1, "unique_recipients": 1, "duplicates": []},
    }


def test_logs_one_line_per_message(sink):
    send(sink["port"], "a@school.test", "c-9")
    sink["process"].terminate()
    output = sink["process"].communicate(timeout=10)[0]

    accepted = [line for line in output.splitlines() if line.startswith("smtp-sink accepted")]
    assert len(accepted) == 1
    assert "to=a@school.test" in accepted[0] and "campaign=c-9" in accepted[0]
    assert "smtp-sink stopped" in output


def test_count_of_an_empty_or_missing_maildir(tmp_path):
    assert count(tmp_path / "missing") == {"total": 0, "by_campaign": {}}


def test_count_spans_a_restart_and_a_stopped_sink_refuses_connections(sink, tmp_path):
    """The rq scenario's outage stops the unit and starts it again on the same Maildir."""
    send(sink["port"], "a@school.test", "c-1")
    sink["process"].terminate()
    sink["process"].wait(timeout=10)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sink["port"]), timeout=2)
    assert count(sink["maildir"])["by_campaign"]["c-1"]["messages"] == 1  # readable while down

    again = subprocess.Popen(
        [sys.executable, str(SINK), "--host", "127.0.0.1", "--port", str(sink["port"]),
         "--maildir", str(sink["maildir"]), "--fault-file", str(sink["fault"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(sink["port"], again)
        send(sink["port"], "b@school.test", "c-1")
    finally:
        again.terminate()
        again.wait(timeout=10)

    assert count(sink["maildir"])["by_campaign"] == {
        "c-1": {"messages": 2, "unique_recipients": 2, "duplicates": []},
    }


@pytest.fixture
def tls_sink(tmp_path):
    """The sink with STARTTLS, on a self-signed certificate for 127.0.0.1 as the role makes it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    port = free_port()
    maildir = tmp_path / "Maildir"
    process = subprocess.Popen(
        [sys.executable, str(SINK), "--host", "127.0.0.1", "--port", str(port),
         "--maildir", str(maildir), "--fault-file", str(tmp_path / "fault"),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        yield {"port": port, "maildir": maildir, "cert": cert}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_starttls_with_a_verified_certificate_is_accepted(tls_sink):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "office@school.test", "a@school.test", "Hi"
    message["X-EduPulse-Campaign"] = "c-tls"
    message.set_content("Body")
    context = ssl.create_default_context(cafile=str(tls_sink["cert"]))  # verifies name and chain
    with smtplib.SMTP("127.0.0.1", tls_sink["port"], timeout=5) as client:
        client.starttls(context=context)
        client.send_message(message)

    assert count(tls_sink["maildir"])["by_campaign"]["c-tls"]["messages"] == 1


def test_starttls_sink_refuses_plaintext_mail(tls_sink):
    with smtplib.SMTP("127.0.0.1", tls_sink["port"], timeout=5) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.mail("office@school.test")

    assert code == 530
    assert count(tls_sink["maildir"])["total"] == 0
