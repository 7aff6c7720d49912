"""inventories/production deployed as README's "Deploying to your server" says, by a new user.

The copy is the repo's inventory unchanged, the vault holds the SMTP password and nothing else,
and every other secret is one that roles/edupulse generated into .credentials beside the copy:
root-only (0700, 0600), unchanged by the re-runs (idempotence and check mode), and what the
server has.
"""
from __future__ import annotations

import os
import re
import stat

from production_helpers import (CONTAINER, CREDENTIALS, FIRST_CONVERGE, PROJECT, SITE, VAULT,
                                credentials, smtp_password, vault)

testinfra_hosts = [f"docker://{CONTAINER}"]

APP_ENV = "/etc/edupulse/edupulse.env"
# Settings of the app's env file that hold a secret: the SMTP password (under both names the app
# reads) and Django's secret key; a broker URL carries its user's password.
SMTP_PASSWORD_SETTINGS = ("EMAIL_HOST_PASSWORD", "SMTP_PASSWORD")


def env_file(host) -> dict[str, str]:
    """The app's env file (KEY="value" lines)."""
    return dict(re.findall(r'^([A-Z0-9_]+)="(.*)"$', host.file(APP_ENV).content_string, re.M))


def test_the_inventory_is_the_repos_own():
    """The copy is inventories/production as the repo has it: only the user's vault is added."""
    for name in ("hosts.yml", "group_vars/all/main.yml", "group_vars/all/vault.yml.example"):
        assert (SITE / name).read_bytes() == (PROJECT / "inventories/production" / name).read_bytes(), name
    added = sorted(str(path.relative_to(SITE)) for path in SITE.rglob("*")
                   if path.is_file() and not path.relative_to(SITE).parts[0].startswith(".credentials"))
    assert added == ["group_vars/all/main.yml", "group_vars/all/vault.yml",
                     "group_vars/all/vault.yml.example", "hosts.yml"], added


def test_the_only_secret_given_is_the_smtp_password():
    """The vault is encrypted and holds one variable, the SMTP password (a Gmail app password's
    shape, not the example's); the inventory itself gives no secret but that vault variable."""
    assert VAULT.read_text().startswith("$ANSIBLE_VAULT;"), "vault.yml is not encrypted"
    assert list(vault()) == ["vault_edupulse_app_email_password"], list(vault())
    assert re.fullmatch(r"[a-z]{4}( [a-z]{4}){3}", smtp_password())
    assert smtp_password() != "abcd efgh ijkl mnop"
    main = (SITE / "group_vars/all/main.yml").read_text()
    secret_settings = re.findall(r"^(\w*(?:password|secret|_key)\w*): (.*)$", main, re.M)
    assert secret_settings == [("edupulse_app_email_password",
                                "\"{{ vault_edupulse_app_email_password | default('') }}\"")], secret_settings


def test_the_credentials_are_root_only_and_unchanged_by_the_reruns():
    """The same files with the same values as after the first converge, after idempotence's
    re-run and the check-mode run, with the modes that roles/edupulse documents."""
    assert FIRST_CONVERGE.is_dir(), "converge.yml's copy of the first converge's credentials is missing"
    now, first = credentials(), credentials(FIRST_CONVERGE)
    assert sorted(now) == sorted(first)
    # Named, never shown: a failure here must not print the secrets.
    assert [name for name in now if now[name] != first[name]] == [], "changed since the first converge"
    assert "django-secret-key" in credentials()
    directory = CREDENTIALS.stat()
    assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == os.getuid(), oct(directory.st_mode)
    for path in CREDENTIALS.iterdir():
        mode = path.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.getuid(), (path.name, oct(mode.st_mode))


def test_the_server_has_the_generated_credentials_and_the_vaults_password(host):
    """Django's secret key is the generated one, the SMTP password is the vault's, and every
    other secret the server's env file holds is one of the generated credentials."""
    env = env_file(host)
    generated = credentials()
    # Compared into a flag, never shown (pytest prints both sides of a failed ==).
    same = env["DJANGO_SECRET_KEY"] == generated["django-secret-key"]
    assert same, "DJANGO_SECRET_KEY is not .credentials/django-secret-key"
    for name in SMTP_PASSWORD_SETTINGS:
        same = env[name] == smtp_password()
        assert same, f"{name} is not the vault's password"
    others = {name: value for name, value in env.items()
              if name not in SMTP_PASSWORD_SETTINGS + ("DJANGO_SECRET_KEY",)
              and re.search(r"PASSWORD|SECRET|TOKEN|://[^/@]*:[^/@]*@", name + "=" + value)}
    for name, value in others.items():
        assert any(secret in value for secret in generated.values()), f"{name} is no generated credential"
    # The key is in the app's env file only (batch mode deploys no broker, so no other credential).
    assert host.run(f"grep -rlF -- {generated['django-secret-key']!r} /etc").stdout.split() == [APP_ENV]
    # The others belong to services this mode does not deploy (Redis, RabbitMQ, Flower,
    # PostgreSQL): generated, since preflight checks them all, but on no server.
    for name, value in generated.items():
        if name != "django-secret-key":
            assert host.run(f"grep -rlF -- {value!r} /etc").rc == 1, name
