"""Exactly once through a real mail server that behaves like Gmail's submission service.

The other tests send to the project's own SMTP sink. Here the deployed app sends through
Postfix from Debian, set up inside the container as a provider is: submission on port 587 with
STARTTLS required (a certificate from a CA this test makes, which the server's trust store
then holds, as it holds a public CA), SASL AUTH through Dovecot's passwd-file, and anvil's rate
limit set so low that the campaign meets real throttling (`450 4.7.1 Error: too much mail
from 127.0.0.1` at MAIL FROM; Postfix logs "rate limit exceeded"). Postfix delivers every recipient into one Maildir and adds a
Delivered-To header: one file per accepted message, so the Maildir is the ground truth.

The app keeps its deployed settings except the mail ones, which a second EnvironmentFile
overrides for this test's commands only (a copy of edupulse-manage with one more line).
First platform only: the OS is not what is tested, and Dovecot's configuration language
changed in Debian 13's 2.4.
"""
from __future__ import annotations

import os
import secrets
import shlex

import pytest

from e2e_helpers import last_json_line, wait_for, write_recipients

SCENARIO = os.environ.get("MOLECULE_SCENARIO_NAME", "batch")
testinfra_hosts = [f"docker://{SCENARIO}-{os.environ.get('EDUPULSE_NAME_1', 'debian12')}"]

MAIL_NAME = "mail.edupulse.test"
DOMAIN = "students.edupulse.test"
MAILDIR = "/var/mail/vmail/students"
SENDER = "notifications@edupulse.test"
WORK = "/root/real-mta"
ENV_FILE = "/etc/edupulse/real-mta.env"
MANAGE = "/usr/local/bin/edupulse-manage-real-mta"
# anvil counts messages per client per time unit: 8 per 10 s is far below what the app sends.
RATE_LIMIT, RATE_UNIT = 8, "10s"
RECIPIENTS = 40

SETUP = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
echo "127.0.0.1 {name}" >> /etc/hosts
echo "postfix postfix/main_mailer_type select Internet Site" | debconf-set-selections
echo "postfix postfix/mailname string {name}" | debconf-set-selections
apt-get install -y -qq postfix dovecot-core openssl >/dev/null
mkdir -p {work} && cd {work}
# The test's CA, and the server's certificate for {name} signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=EduPulse test CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN={name}" -keyout mail.key -out mail.csr 2>/dev/null
printf 'subjectAltName=DNS:{name}\n' > san.ext
openssl x509 -req -in mail.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile san.ext -out mail.crt 2>/dev/null
install -m 0644 mail.crt /etc/ssl/certs/edupulse-test-mail.crt
install -m 0600 mail.key /etc/ssl/private/edupulse-test-mail.key
install -m 0644 ca.crt /usr/local/share/ca-certificates/edupulse-test-ca.crt
update-ca-certificates >/dev/null 2>&1
id vmail >/dev/null 2>&1 || useradd --system --uid 5000 --user-group --home-dir /var/mail/vmail vmail
install -d -o vmail -g vmail /var/mail/vmail
postconf -e "myhostname={name}" "mydestination=localhost" \
  "virtual_mailbox_domains={domain}" "virtual_mailbox_base=/var/mail/vmail" \
  "virtual_mailbox_maps=static:students/" "virtual_uid_maps=static:5000" "virtual_gid_maps=static:5000" \
  "smtpd_tls_cert_file=/etc/ssl/certs/edupulse-test-mail.crt" \
  "smtpd_tls_key_file=/etc/ssl/private/edupulse-test-mail.key" \
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
    """Postfix + Dovecot on 587 in the container; the app's mail settings pointed at it."""
    password = secrets.token_hex(12)
    script = SETUP.format(name=MAIL_NAME, work=WORK, domain=DOMAIN, rate=RATE_LIMIT,
                          unit=RATE_UNIT, sender=SENDER)
    setup = host.run(f"MTA_PASSWORD={shlex.quote(password)} bash -c {shlex.quote(script)}")
    assert setup.rc == 0, setup.stdout + setup.stderr
    env = "\n".join([
        f'EMAIL_HOST="{MAIL_NAME}"', 'EMAIL_PORT="587"', 'EMAIL_USE_TLS="true"',
        'EMAIL_USE_SSL="false"', f'EMAIL_HOST_USER="{SENDER}"', f'EMAIL_HOST_PASSWORD="{password}"',
        f'DEFAULT_FROM_EMAIL="EduPulse <{SENDER}>"', 'BULK_EMAIL_RETRY_BACKOFF="1"',
    ]) + "\n"
    host.run_expect([0], f"umask 077 && printf %s {shlex.quote(env)} > {ENV_FILE}")
    # The operator's wrapper with the override file after the deployed one (later wins).
    host.run_expect([0], (
        "sed 's|^\\(\\s*--property=EnvironmentFile=\\S*\\)|\\1 --property=EnvironmentFile="
        f"{ENV_FILE}|' /usr/local/bin/edupulse-manage > {MANAGE} && chmod 0755 {MANAGE} "
        f"&& grep -q {ENV_FILE} {MANAGE}"
    ))
    yield password
    host.run(f"systemctl stop postfix dovecot; rm -f {ENV_FILE} {MANAGE} "
             "/usr/local/share/ca-certificates/edupulse-test-ca.crt; update-ca-certificates --fresh")


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
    """The provider is real: no AUTH without STARTTLS, a wrong password is refused (535)."""
    probe = (
        "import smtplib, ssl, sys\n"
        f"s = smtplib.SMTP({MAIL_NAME!r}, 587, timeout=30); s.ehlo()\n"
        "print('auth-before-tls', 'auth' in s.esmtp_features)\n"
        "s.starttls(context=ssl.create_default_context()); s.ehlo()\n"
        "try:\n"
        f"    s.login({SENDER!r}, 'wrong-password')\n"
        "except smtplib.SMTPAuthenticationError as e:\n"
        "    print('wrong-password', e.smtp_code)\n"
    )
    out = host.run(f"python3 -c {shlex.quote(probe)}")
    assert out.rc == 0, out.stderr
    assert "auth-before-tls False" in out.stdout and "wrong-password 535" in out.stdout, out.stdout


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
