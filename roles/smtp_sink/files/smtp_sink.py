#!/usr/bin/python3
"""A local SMTP server that stores every accepted message in a Maildir.

Used by the demo and the end-to-end tests instead of a real provider:

    smtp_sink.py --host 127.0.0.1 --port 2525 --maildir /var/lib/smtp-sink/Maildir

Each accepted transaction becomes one file in Maildir/new (written to tmp/
and renamed, so a reader never sees half a message), with the envelope
added as headers (X-Sink-Mail-From, X-Sink-Rcpt-To) so count_deliveries.py
can count messages per recipient and per X-EduPulse-Campaign header. One
line per message is printed to stdout (journald under systemd).

Fault injection: while the file named by --fault-file exists and holds an
SMTP code such as 421 or 451, every message is answered with that code at
DATA and not stored, which simulates a provider outage; a permanent code
(5xx, e.g. 550) refuses every recipient at RCPT TO instead, as a provider
refuses a mailbox (a 5xx at DATA would refuse the message or the account). "stall N" instead makes the
server wait N seconds before answering each RCPT TO, like a provider slow to
accept recipients: a client killed meanwhile has sent nothing the server
could accept, which is how the tests kill workers in the middle of a send
without landing in the one window no sender can close (the server stored
the message, the sender died before recording it). No file means normal.

AUTH is offered without TLS and any credentials are accepted; a client
that does not log in is accepted too. Needs aiosmtpd (Debian/Ubuntu:
python3-aiosmtpd).

STARTTLS (--tls-cert and --tls-key, off without them): the server offers
STARTTLS with that certificate and refuses MAIL FROM before it (530), so
a client configured for TLS, like the app with EMAIL_USE_TLS, is proven
to use it. The benchmarks (bench/) measure sending against this, because
a real provider's port 587 costs a TLS handshake per connection and
encryption per message.
"""
import argparse
import asyncio
import mailbox
import re
import signal
import ssl
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

FAULT_REPLIES = {
    "421": "421 4.3.2 Service not available (smtp-sink fault injection)",
    "450": "450 4.2.0 Mailbox unavailable (smtp-sink fault injection)",
    "451": "451 4.3.0 Local error in processing (smtp-sink fault injection)",
    "452": "452 4.3.1 Insufficient system storage (smtp-sink fault injection)",
}


def read_fault(fault_file: Path) -> str | None:
    """Return the SMTP reply to fail with, or None to accept (file absent or empty)."""
    try:
        text = fault_file.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text:
        return None
    code = text.split()[0]
    if code in FAULT_REPLIES:
        return FAULT_REPLIES[code]
    if re.fullmatch(r"[45]\d\d", code):
        return f"{code} smtp-sink fault injection"
    return None


def read_stall(fault_file: Path) -> float:
    """Seconds to wait before answering RCPT TO ("stall N" in the fault file), else 0."""
    try:
        words = fault_file.read_text(encoding="utf-8").split()
    except (FileNotFoundError, NotADirectoryError):
        return 0.0
    if len(words) == 2 and words[0] == "stall":
        try:
            return max(float(words[1]), 0.0)
        except ValueError:
            return 0.0
    return 0.0


def header_value(content: bytes, name: str) -> str:
    """Find one header in raw message bytes without parsing the whole message."""
    head = content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    match = re.search(rb"^" + name.encode() + rb":[ \t]*(.*)$", head, re.IGNORECASE | re.MULTILINE)
    return match.group(1).strip().decode("utf-8", "replace") if match else "-"


class MaildirHandler:
    """aiosmtpd handler: store each accepted message as one Maildir file."""

    def __init__(self, maildir: Path, fault_file: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, factory=None, create=True)
        self.fault_file = fault_file
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        stall = read_stall(self.fault_file)
        if stall:
            await asyncio.sleep(stall)
        fault = read_fault(self.fault_file)
        if fault and fault.startswith("5"):
            print(f"smtp-sink refused from={envelope.mail_from} to={address} reply={fault[:3]}", flush=True)
            return fault
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
        recipients = ", ".join(envelope.rcpt_tos)
        fault = read_fault(self.fault_file)
        if fault:
            print(f"smtp-sink refused from={envelope.mail_from} to={recipients} reply={fault[:3]}", flush=True)
            return fault
        content = envelope.original_content or envelope.content
        envelope_headers = (
            f"X-Sink-Mail-From: {envelope.mail_from}\r\nX-Sink-Rcpt-To: {recipients}\r\n"
        ).encode()
        with self.lock:
            key = self.maildir.add(envelope_headers + content)
        print(
            f"smtp-sink accepted from={envelope.mail_from} to={recipients} "
            f"campaign={header_value(content, 'X-EduPulse-Campaign')} bytes={len(content)} file={key}",
            flush=True,
        )
        return "250 2.0.0 Message accepted"


def accept_any_login(server, session, envelope, mechanism, auth_data) -> AuthResult:
    """Accept every AUTH attempt: the sink tests sending, not credentials."""
    return AuthResult(success=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SMTP server storing messages in a Maildir.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, default=Path("/var/lib/smtp-sink/Maildir"))
    parser.add_argument("--fault-file", type=Path, default=Path("/run/smtp-sink/fault"))
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: offer and require STARTTLS.")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert.")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def tls_parameters(cert: Path | None, key: Path | None) -> dict:
    """aiosmtpd's STARTTLS options: none without a certificate, else offered and required.

    Required, not just offered: a sink that also took plaintext would let a
    client whose TLS setting is broken pass unnoticed.
    """
    if cert is None or key is None:
        return {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return {"tls_context": context, "require_starttls": True}


def main() -> None:
    args = parse_args()
    handler = MaildirHandler(args.maildir, args.fault_file)
    controller = Controller(
        handler,
        hostname=args.host,
        port=args.port,
        authenticator=accept_any_login,
        auth_require_tls=False,
        **tls_parameters(args.tls_cert, args.tls_key),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller.start()
    tls = ", STARTTLS required" if args.tls_cert else ""
    print(f"smtp-sink listening on {args.host}:{args.port}{tls}, maildir {args.maildir}", flush=True)
    try:
        stop.wait()
    finally:
        controller.stop()
        print("smtp-sink stopped", flush=True)


if __name__ == "__main__":
    main()
