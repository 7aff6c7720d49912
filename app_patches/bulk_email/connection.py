"""The SMTP connection of a batch: a shared TLS context and a patient wait for the final reply.

Why wait so long for one reply: after the final dot of DATA, RFC 5321
(4.5.3.2.6) gives the server 10 minutes to answer, because that is when it
takes responsibility for the message (spam and virus scans, queueing).
With EMAIL_TIMEOUT (60 s) a slow 250 looks like a timeout, the sender
retries, and the recipient gets the message twice. So while waiting for
that one reply, and only then, the socket waits
BULK_EMAIL_DATA_REPLY_TIMEOUT (default 600 s); every other command keeps
EMAIL_TIMEOUT. The claim timeout is checked at startup to outlast this
wait (settings.longest_attempt).
"""
import functools
import smtplib
import ssl

from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend

END_OF_DATA = b"\r\n.\r\n"


class PatientDataReply:
    """smtplib.SMTP mixin: wait BULK_EMAIL_DATA_REPLY_TIMEOUT for the reply to the final dot."""

    _in_data = False

    def data(self, msg):  # type: ignore[no-untyped-def]
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False
            if getattr(self, "sock", None) is not None:
                self.sock.settimeout(self.timeout)

    def send(self, s):  # type: ignore[no-untyped-def]
        super().send(s)
        if self._in_data and isinstance(s, bytes) and s.endswith(END_OF_DATA) and self.sock is not None:
            self.sock.settimeout(settings.BULK_EMAIL_DATA_REPLY_TIMEOUT)


class PatientSMTP(PatientDataReply, smtplib.SMTP):
    """Plain or STARTTLS session with the patient end-of-data wait."""


class PatientSMTPSSL(PatientDataReply, smtplib.SMTP_SSL):
    """Implicit-TLS session (EMAIL_USE_SSL) with the patient end-of-data wait."""


class DataReplyBackend(SMTPBackend):
    """Django's SMTP backend whose sessions wait patiently for the end-of-data reply."""

    @property
    def connection_class(self):  # type: ignore[override]
        return PatientSMTPSSL if self.use_ssl else PatientSMTP


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The client TLS context of this process's SMTP connections, built once per process.

    Django's SMTP backend builds ``ssl.create_default_context()`` for every
    connection, i.e. every batch, and loading the system trust store is most
    of that: 40-80 ms on a 2-core server, 2-4 ms per message at 20 messages
    per batch (bench/, README "Benchmarks"). One context per process checks
    exactly the same (chain and host name against the system trust store); a
    CA added to the trust store is seen once the process restarts.
    """
    return ssl.create_default_context()


def share_tls_context(connection: BaseEmailBackend) -> BaseEmailBackend:
    """Give a Django SMTP connection this process's TLS context (see tls_context).

    Only where Django would build that same default context itself: a backend
    with a client certificate (EMAIL_SSL_CERTFILE/KEYFILE) or another backend
    class keeps its own behaviour.
    """
    if isinstance(connection, SMTPBackend) and not (connection.ssl_certfile or connection.ssl_keyfile):
        connection.ssl_context = tls_context()  # Django's cached_property: the instance's value wins
    return connection


def prepare_connection(connection: BaseEmailBackend) -> BaseEmailBackend:
    """A batch's connection: the shared TLS context and, for Django's own SMTP backend
    (exactly that class; a project's subclass keeps its behaviour), the patient DATA wait."""
    if type(connection) is SMTPBackend:
        connection.__class__ = DataReplyBackend
    return share_tls_context(connection)


def preload() -> None:
    """Load what sending needs (SMTP backend, TLS trust store) now rather than at the first send.

    For processes that fork a child per job (rq's work-horses): the children
    inherit it instead of each loading it again (bulk_email.rq_worker).
    """
    get_connection(fail_silently=False)
    tls_context()


def close_quietly(connection: BaseEmailBackend) -> None:
    """Close a connection that may already be broken; errors here change nothing."""
    try:
        connection.close()
    except (smtplib.SMTPException, OSError):
        pass
