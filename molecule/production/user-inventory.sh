#!/usr/bin/env bash
# molecule/production's dependency step: what a new user does after README's "Deploying to your
# server", in the scenario's ephemeral directory (never in the repo: roles/edupulse generates the
# internal credentials into .credentials beside the inventory).
#   user-inventory.sh PROJECT_DIRECTORY EPHEMERAL_DIRECTORY
# It runs before every sequence that runs a playbook (molecule.yml): ansible-playbook needs the
# vault password file from its start, for syntax and prepare too.
set -euo pipefail

repo=${1:?usage: user-inventory.sh PROJECT_DIRECTORY EPHEMERAL_DIRECTORY}
ephemeral=${2:?usage: user-inventory.sh PROJECT_DIRECTORY EPHEMERAL_DIRECTORY}
site=$ephemeral/production
vault=$site/group_vars/all/vault.yml
password_file=$ephemeral/vault-password

# Step 1: the inventory as the repo has it, copied again on every run, so that the scenario
# deploys what inventories/production says today. What only the copy has (vault.yml, the
# generated .credentials) stays, as in the user's own copy.
mkdir -p "$site"
cp -R "$repo/inventories/production/." "$site/"

# Step 3: the one secret, made once: a later run uses the same vault, as the user's does.
if [[ ! -f $vault ]]; then
  umask 077
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$password_file"
  # A Gmail app password's shape: four groups of four letters.
  password=$(python3 -c 'import secrets, string
print(" ".join("".join(secrets.choice(string.ascii_lowercase) for _ in range(4)) for _ in range(4)))')
  # vault.yml.example with the example password replaced, as its first line says to do.
  sed "s/^vault_edupulse_app_email_password: .*/vault_edupulse_app_email_password: \"$password\"/" \
    "$site/group_vars/all/vault.yml.example" >"$vault.new"
  grep -qx "vault_edupulse_app_email_password: \"$password\"" "$vault.new"
  ansible-vault encrypt --vault-password-file "$password_file" "$vault.new"
  mv "$vault.new" "$vault"
fi
