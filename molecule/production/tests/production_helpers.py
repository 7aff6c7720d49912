"""What molecule/production's tests share: the user's copy of inventories/production (made by
user-inventory.sh in the scenario's ephemeral directory) and its one secret."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SITE = EPHEMERAL / "production"
CREDENTIALS = SITE / ".credentials"
# converge.yml's copy of the credentials as the first converge left them.
FIRST_CONVERGE = SITE / ".credentials-first-converge"
VAULT = SITE / "group_vars" / "all" / "vault.yml"
VAULT_PASSWORD_FILE = EPHEMERAL / "vault-password"
CONTAINER = f"{os.environ.get('MOLECULE_SCENARIO_NAME', 'production')}-{os.environ.get('EDUPULSE_NAME_1', 'debian12')}"


@functools.cache
def vault() -> dict[str, str]:
    """The vault's variables, decrypted as ansible-playbook decrypts them."""
    out = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-vault")), "view",
         "--vault-password-file", str(VAULT_PASSWORD_FILE), str(VAULT)],
        capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def smtp_password() -> str:
    return vault()["vault_edupulse_app_email_password"]


def credentials(directory: Path = CREDENTIALS) -> dict[str, str]:
    """{file name: value} of a credentials directory (the password lookup's files: the value,
    then a newline)."""
    return {path.name: path.read_text().rstrip("\n") for path in sorted(directory.iterdir())}
