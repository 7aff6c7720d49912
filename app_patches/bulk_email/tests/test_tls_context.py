"""STARTTLS with one TLS context per process, against a real STARTTLS server on loopback.

The context is shared only to save loading the trust store for every batch
(bench/); these tests pin that the sharing changes nothing about what is
verified, and that rq's worker class loads it before forking.
"""
from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from django.core.mail import get_connection

from bulk_email import connection as sending  # tls_context lives in bulk_email.connection
from bulk_email.campaigns import create_campaign
from bulk_email.sending import send_campaign, share_tls_context, tls_context

from .conftest import ScriptedSmtpHandler, free_port

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, like the smtp_sink role's."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
def starttls_smtp(settings, smtp, certificate) -> Iterator[ScriptedSmtpHandler]:
    """An SMTP server that requires STARTTLS, and the app configured for TLS to it."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*certificate)
    handler = ScriptedSmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            tls_context=server_context, require_starttls=True)
    controller.start()
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = True
    try:
        yield handler
    finally:
        controller.stop()


def test_the_context_is_built_once_per_process():
    assert tls_context() is tls_context()
    assert tls_context().verify_mode == ssl.CERT_REQUIRED and tls_context().check_hostname


def test_every_smtp_connection_gets_the_shared_context(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    first = share_tls_context(get_connection())
    second = share_tls_context(get_connection())

    assert first.ssl_context is second.ssl_context is tls_context()


def test_a_client_certificate_or_another_backend_is_left_alone(settings, certificate):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    cert, key = certificate
    with_client_cert = share_tls_context(get_connection(ssl_certfile=str(cert), ssl_keyfile=str(key)))
    assert with_client_cert.ssl_context is not tls_context()

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert not hasattr(share_tls_context(get_connection()), "ssl_context")


def test_starttls_campaign_verifies_the_server_and_sends_every_batch(
    starttls_smtp, certificate, monkeypatch, sleep
):
    trusted = ssl.create_default_context(cafile=str(certificate[0]))  # the trust store, with the CA
    monkeypatch.setattr(sending, "tls_context", lambda: trusted)
    campaign = create_campaign("Timetable", "Body", [f"s{i:02d}@school.test" for i in range(45)])

    run = send_campaign(campaign, sleep=sleep)

    assert run.batches == 3 and run.counts["sent"] == 45
    assert len(starttls_smtp.messages) == 45


def test_starttls_to_an_untrusted_server_sends_nothing(starttls_smtp, monkeypatch, settings, sleep):
    settings.BULK_EMAIL_MAX_ATTEMPTS = 1
    untrusted = ssl.create_default_context()  # the system trust store, without the test CA
    monkeypatch.setattr(sending, "tls_context", lambda: untrusted)
    campaign = create_campaign("Timetable", "Body", ["a@school.test", "b@school.test", "c@school.test"])

    run = send_campaign(campaign, sleep=sleep)

    assert run.counts == {"pending": 3, "sent": 0, "failed": 0}
    assert "CERTIFICATE_VERIFY_FAILED" in campaign.deliveries.first().last_error
    assert starttls_smtp.messages == []


def test_the_rq_worker_class_loads_the_sending_path_before_it_forks(monkeypatch, redis_server):
    rq_worker = pytest.importorskip("bulk_email.rq_worker")
    import redis
    from rq import Worker

    calls = []
    monkeypatch.setattr(rq_worker, "preload", lambda: calls.append("preload"))
    worker = rq_worker.Worker(["email"], connection=redis.Redis.from_url(redis_server))

    assert isinstance(worker, Worker) and calls == ["preload"]


def test_rq_mode_configures_the_preloading_worker_class(settings):
    pytest.importorskip("rq")
    from django.utils.module_loading import import_string

    from bulk_email.settings import load

    values = load({"BULK_EMAIL_QUEUE_MODE": "rq", "BULK_EMAIL_REDIS_URL": "redis://u:p@127.0.0.1:6379/0"})

    assert import_string(values["RQ"]["WORKER_CLASS"]).__name__ == "Worker"
    assert "RQ" not in load({})  # batch mode never configures django-rq
