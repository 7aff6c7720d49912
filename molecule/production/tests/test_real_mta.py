"""Exactly once through a real mail server that answers for Gmail's submission service.

The inventory keeps Gmail's settings (smtp.gmail.com, 587, STARTTLS, the vault's app password);
here smtp.gmail.com resolves, inside the container, to Postfix from Debian set up as a provider
is: submission on port 587 with STARTTLS required (the certificate for smtp.gmail.com from the
CA that prepare.yml made, which the deployed role put into the server's trust store as the
inventory's extra CA, as a public CA is there), SASL AUTH through Dovecot's passwd-file with the
vault's password, and anvil's rate limit set so low that the campaign meets real throttling
(`450 4.7.1 Error: too much mail from 127.0.0.1` at MAIL FROM; Postfix logs "rate limit
exceeded"). Postfix delivers every recipient into one Maildir and adds a Delivered-To header:
one file per accepted message, so the Maildir is the ground truth.

The app sends with its deployed settings, untouched: the point is that the production
inventory's work. The provider is set up here, after converge: the deploy sends no mail.
Dovecot's configuration language is Debian 12's (2.3); this scenario has Debian 12 only.
"""
from __future__ import annotations

import shlex

import pytest

from e2e_helpers import MANAGE, env_value, last_json_line, wait_for, write_recipients
from production_helpers import CONTAINER, smtp_password

testinfra_hosts = [f"docker://{CONTAINER}"]

# The inventory's SMTP server (edupulse_app_email_host's default) and account.
MAIL_NAME = "smtp.gmail.com"
DOMAIN = "students.edupulse.test"
MAILDIR = "/var/mail/vmail/students"
# anvil counts messages per client per time unit: 8 per 10 s is far below what the app sends.
RATE_LIMIT, RATE_UNIT = 8, "10s"
RECIPIENTS = 40

SETUP = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
# smtp.gmail.com is this container, for every process on it (the deployed app included).
grep -q " {name}$" /etc/hosts || echo "127.0.0.1 {name}" >> /etc/hosts
echo "postfix postfix/main_mailer_type select Internet Site" | debconf-set-selections
echo "postfix postfix/mailname string {name}" | debconf-set-selections
apt-get install -y -qq postfix dovecot-core >/dev/null
id vmail >/dev/null 2>&1 || useradd --system --uid 5000 --user-group --home-dir /var/mail/vmail vmail
install -d -o vmail -g vmail /var/mail/vmail
postconf -e "myhostname={name}" "mydestination=localhost" \
  "virtual_mailbox_domains={domain}" "virtual_mailbox_base=/var/mail/vmail" \
  "virtual_mailbox_maps=static:students/" "virtual_uid_maps=static:5000" "virtual_gid_maps=static:5000" \
  "smtpd_tls_cert_file=/etc/ssl/certs/smtp-provider.crt" \
  "smtpd_tls_key_file=/etc/ssl/private/smtp-provider.key" \
  "smtpd_client_message_rate_limit={rate}" "anvil_rate_time_unit={unit}" \
  "smtpd_client_event_limit_exceptions="
postconf -M submission/inet="submission inet n - y - - smtpd"
postconf -P "submission/inet/syslog_name=postfix/submission" \
  "submission/inet/smtpd_tls_security_level=encrypt" \
  "submission/inet/smtpd_sasl_auth_enable=yes" \
  "submission/inet/smtpd_sasl_type=dovecot" \
  "submission/inet/smtpd_sasl_path=private/auth" \
  "submission/inet/smtpd_client_restrictions=permit_sasl_authenticated,reject" \
  "submission/inet/smtpd_relay_restrictions=permit_sasl_authenticated,reject"
cat > /etc/dovecot/dovecot.conf <<'CONF'
protocols =
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u /etc/dovecot/edupulse-users
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home=/var/mail/vmail
}}
service auth {{
  unix_listener /var/spool/postfix/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
ssl = no
CONF
printf '%s:{{PLAIN}}%s\n' '{sender}' "$MTA_PASSWORD" > /etc/dovecot/edupulse-users
chown root:dovecot /etc/dovecot/edupulse-users && chmod 0640 /etc/dovecot/edupulse-users
systemctl restart dovecot postfix
"""


def manage(host, *args: str):
    return host.run(" ".join([MANAGE, *map(shlex.quote, args)]))


@pytest.fixture(scope="module")
def provider(host):
    """Postfix + Dovecot on 587 as smtp.gmail.com, whose account is the deployed app's and whose
    password is the vault's (the app's own copy of it is what logs in)."""
    settings = {name: env_value(host, name) for name in
                ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_USE_TLS", "EMAIL_USE_SSL", "EMAIL_HOST_USER")}
    # The inventory's Gmail settings, as deployed: nothing here points the app elsewhere.
    assert settings == {"EMAIL_HOST": MAIL_NAME, "EMAIL_PORT": "587", "EMAIL_USE_TLS": "true",
                        "EMAIL_USE_SSL": "false", "EMAIL_HOST_USER": "notifications@example.org"}, settings
    sender = settings["EMAIL_HOST_USER"]
    script = SETUP.format(name=MAIL_NAME, domain=DOMAIN, rate=RATE_LIMIT, unit=RATE_UNIT, sender=sender)
    setup = host.run(f"MTA_PASSWORD={shlex.quote(smtp_password())} bash -c {shlex.quote(script)}")
    assert setup.rc == 0, setup.stdout + setup.stderr
    yield sender
    host.run("systemctl stop postfix dovecot")


def delivered_to(host, campaign_id: str) -> list[str]:
    """One Delivered-To address per message of the campaign in the provider's Maildir."""
    out = host.run(
        f"grep -l -r -F 'X-EduPulse-Campaign: {campaign_id}' {MAILDIR}/new "
        "| xargs --no-run-if-empty sed -n 's/^Delivered-To: //p'"
    )
    return [line.strip().lower() for line in out.stdout.splitlines() if line.strip()]


def ledger(host, campaign_id: str) -> dict:
    code = (
        "import json\n"
        "from bulk_email.models import Delivery\n"
        f"rows = Delivery.objects.filter(campaign_id={campaign_id!r})\n"
        "print(json.dumps({'pending': rows.filter(status='pending').count(),\n"
        "                  'sent': rows.filter(status='sent').count(),\n"
        "                  'failed': rows.filter(status='failed').count(),\n"
        "                  'retried': rows.filter(attempts__gt=1).count()}))\n"
    )
    return last_json_line(manage(host, "shell", "-c", code).stdout)


def test_the_provider_requires_tls_and_auth(host, provider):
    """The provider is real: no AUTH without STARTTLS, a wrong password is refused (535), and its
    certificate is trusted only through the test's CA (a client with no CA refuses it)."""
    probe = (
        "import smtplib, ssl, sys\n"
        f"s = smtplib.SMTP({MAIL_NAME!r}, 587, timeout=30); s.ehlo()\n"
        "print('auth-before-tls', 'auth' in s.esmtp_features)\n"
        "s.starttls(context=ssl.create_default_context()); s.ehlo()\n"
        "try:\n"
        f"    s.login({provider!r}, 'wrong-password')\n"
        "except smtplib.SMTPAuthenticationError as e:\n"
        "    print('wrong-password', e.smtp_code)\n"
        f"s = smtplib.SMTP({MAIL_NAME!r}, 587, timeout=30); s.ehlo()\n"
        "try:\n"
        "    s.starttls(context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))\n"
        "except ssl.SSLCertVerificationError as e:\n"
        "    print('no-ca', e.verify_message)\n"
    )
    out = host.run(f"python3 -c {shlex.quote(probe)}")
    assert out.rc == 0, out.stderr
    assert "auth-before-tls False" in out.stdout and "wrong-password 535" in out.stdout, out.stdout
    assert "no-ca unable to get local issuer certificate" in out.stdout, out.stdout


def test_the_app_verifies_the_providers_certificate(host, provider):
    """The deployed app's own SMTP connection (its settings, its batch connection's TLS context)
    checks the chain and the name: the context requires both, and the session's peer
    certificate is the verified one for smtp.gmail.com (ssl returns none when unverified)."""
    code = (
        "import json, ssl\n"
        "from django.core.mail import get_connection\n"
        "from bulk_email.connection import prepare_connection\n"
        "connection = prepare_connection(get_connection(fail_silently=False))\n"
        "connection.open()\n"
        "peer = connection.connection.sock.getpeercert()\n"
        "print(json.dumps({'required': connection.ssl_context.verify_mode == ssl.CERT_REQUIRED,\n"
        "                  'hostname': connection.ssl_context.check_hostname,\n"
        "                  'names': [v for k, v in peer.get('subjectAltName', ())]}))\n"
        "connection.close()\n"
    )
    out = manage(host, "shell", "-c", code)
    assert out.rc == 0, out.stdout + out.stderr
    assert last_json_line(out.stdout) == {"required": True, "hostname": True, "names": [MAIL_NAME]}, out.stdout


def test_campaign_through_a_throttling_provider_arrives_exactly_once(host, provider):
    path = write_recipients(host, RECIPIENTS)
    host.run_expect([0], f"sed -i 's/@edupulse.test$/@{DOMAIN}/' {path}")
    first = manage(host, "send_campaign", "--subject", "Exam timetable (real MTA)",
                   "--body", "Dear student, the exam timetable changed.",
                   "--recipients-file", path, "--json")
    assert first.rc == 0, first.stdout + first.stderr
    campaign = last_json_line(first.stdout)["id"]

    # What throttling left pending goes out later (the batch sender's timer in production;
    # here the operator's --resume, bounded), never twice.
    def settled() -> bool:
        if ledger(host, campaign)["pending"] == 0:
            return True
        manage(host, "send_campaign", "--resume", campaign, "--json")
        return ledger(host, campaign)["pending"] == 0

    assert wait_for(settled, timeout=600, interval=5), ledger(host, campaign)
    counts = ledger(host, campaign)
    assert (counts["sent"], counts["failed"], counts["pending"]) == (RECIPIENTS, 0, 0), counts
    # The provider really throttled this campaign (its own log says so), and the app retried
    # those recipients instead of failing them.
    throttled = host.run("journalctl --no-pager -t postfix/submission/smtpd | grep -c 'rate limit exceeded'")
    assert throttled.stdout.strip().isdigit() and int(throttled.stdout) > 0, throttled.stdout
    assert counts["retried"] > 0, counts
    # The Maildir holds each recipient once: nothing lost, nothing doubled.
    mails = delivered_to(host, campaign)
    expected = sorted(line.strip().lower() for line in host.file(path).content_string.splitlines())
    assert sorted(mails) == expected, (len(mails), len(set(mails)))
