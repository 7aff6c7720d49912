"""Which SMTP errors are whose fault: the recipient's, the moment's, or the account's.

The class decides what the sender does with the delivery and the run:

* TRANSIENT (4xx replies, dropped connections, timeouts): retry the same
  recipient after a backoff; it stays pending if it keeps failing.
* PERMANENT (the server refused *this recipient* at RCPT with a 5xx, or an
  address Django cannot encode): the delivery is failed; sending goes on.
* STOP (a 5xx at MAIL FROM or after DATA, e.g. "550 5.4.5 Daily user
  sending limit exceeded", 530, 552, 553, 554): the server refused the
  sending account or the message, which every other recipient would get
  refused too. Failing them all would lose the campaign for a reason that
  is not theirs, so the run stops and they stay pending.
* FATAL (login refused, no STARTTLS): a configuration error; the run
  raises SmtpConfigurationError and everything unsent stays pending.
"""
import smtplib

from django.core.exceptions import ValidationError

TRANSIENT, PERMANENT, STOP, FATAL = "transient", "permanent", "stop", "fatal"


class SmtpConfigurationError(Exception):
    """The SMTP account or server configuration is wrong (login refused, no STARTTLS).

    Its message is one line meant for the operator; the SMTP error is its
    __cause__.
    """


def classify(exc: Exception) -> str:
    """Say whether an error from one send is TRANSIENT, PERMANENT, STOP or FATAL (see module doc)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return TRANSIENT if codes and all(400 <= code < 500 for code in codes) else PERMANENT
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return TRANSIENT if 400 <= exc.smtp_code < 500 else FATAL
    if isinstance(exc, smtplib.SMTPResponseException):
        return TRANSIENT if 400 <= exc.smtp_code < 500 else STOP
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return FATAL
    if isinstance(exc, OSError):  # SMTPServerDisconnected, timeouts, refused/reset connections
        return TRANSIENT
    if isinstance(exc, (ValueError, ValidationError)):  # address Django cannot encode
        return PERMANENT
    raise exc


def describe(exc: Exception) -> str:
    """Render an error for the ledger, with the SMTP code and text when there is one."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, text = next(iter(exc.recipients.values()))
        return f"{type(exc).__name__}: {code} {_text(text)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.smtp_code} {_text(exc.smtp_error)}"
    return f"{type(exc).__name__}: {exc}"


def configuration_error(exc: Exception) -> SmtpConfigurationError:
    """The operator's one-line explanation of a FATAL error."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SmtpConfigurationError(
            f"SMTP login refused ({describe(exc)}): check EMAIL_HOST_USER and EMAIL_HOST_PASSWORD; "
            "no message was sent and the remaining deliveries stay pending"
        )
    return SmtpConfigurationError(
        f"SMTP server configuration problem ({describe(exc)}): check EMAIL_HOST, EMAIL_PORT, "
        "EMAIL_USE_TLS/EMAIL_USE_SSL; the remaining deliveries stay pending"
    )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
