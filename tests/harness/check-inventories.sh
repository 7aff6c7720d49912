#!/usr/bin/env bash
# The example inventories pass site.yml's validation in every queue mode (and both Celery
# brokers) once the vault holds real secrets (random ones here), and are refused with the vault
# example's public placeholders, a "change-me" value or a short password, naming the variable.
# inventories/cluster is the multi-host example (web, data, two workers).
# playbooks/preflight.yml only asserts on variables (no module runs; the connection is local
# all the same), so no host is contacted.
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
extra_inventory=$(mktemp --suffix=.yml)
vault=$(mktemp --suffix=.yml)
trap 'rm -f "$extra_inventory" "$vault" "$vault.weak"' EXIT
example_vault=inventories/production/group_vars/all/vault.yml.example
# A vault as a user fills it in: every one-line value of the example replaced by a random one.
python3 - "$example_vault" "$vault" <<'PY'
import json, re, secrets, sys
lines = []
for line in open(sys.argv[1], encoding="utf-8"):
    match = re.match(r'^(vault_\w+): "[^"\n]*"$', line.rstrip("\n"))
    lines.append(f"{match.group(1)}: {json.dumps(secrets.token_hex(24))}\n" if match else line)
open(sys.argv[2], "w", encoding="utf-8").writelines(lines)
PY
for inventory in inventories/production inventories/staging inventories/cluster; do
  for variant in batch rq celery:redis celery:rabbitmq; do
    mode=${variant%%:*}
    broker=${variant#*:}
    [ "$broker" = "$variant" ] && broker=redis
    extra=(-e "queue_mode=$mode" -e "celery_broker=$broker")
    # The cluster's TLS certificate is made per deployment (inventories/cluster/files/README.md).
    if [ "$inventory" = inventories/cluster ]; then
      extra+=(-e '{"redis_tls_certificate": "-----BEGIN CERTIFICATE-----\n(placeholder)\n-----END CERTIFICATE-----"}')
    fi
    # RabbitMQ needs its host in a 'rabbitmq' group: the example's single server, as a user
    # would add it (a second inventory source adds the group).
    inventories=(-i "$inventory/hosts.yml")
    if [ "$broker" = rabbitmq ]; then
      host=$(ansible-inventory -i "$inventory/hosts.yml" --list | python3 -c \
        'import json, sys; print(json.load(sys.stdin)["web"]["hosts"][0])')
      printf 'all:\n  children:\n    rabbitmq:\n      hosts:\n        %s:\n' "$host" >"$extra_inventory"
      inventories+=(-i "$extra_inventory")
    fi
    if out=$(ansible-playbook playbooks/preflight.yml "${inventories[@]}" -e ansible_connection=local \
        -e "@$vault" "${extra[@]}" 2>&1); then
      echo "[inventories] $inventory $variant: valid"
    else
      echo "[inventories] $inventory $variant: INVALID"
      echo "$out" | grep -E 'fatal|msg' | head -20
      status=1
    fi
  done
done

# refused VAULT MODE EXPECTED...: preflight must fail and name each EXPECTED text.
refused() {
  local vault_file=$1 mode=$2 out
  shift 2
  if out=$(ansible-playbook playbooks/preflight.yml -i inventories/production/hosts.yml \
      -e ansible_connection=local -e "@$vault_file" -e "queue_mode=$mode" 2>&1); then
    echo "[inventories] production $mode with $vault_file: ACCEPTED (should be refused)"
    status=1
    return
  fi
  for expected in "$@"; do
    if ! grep -qF -- "$expected" <<<"$out"; then
      echo "[inventories] production $mode with $vault_file: refused, but without '$expected'"
      echo "$out" | grep -E 'ERROR|msg' | head -5
      status=1
      return
    fi
  done
  echo "[inventories] production $mode with $vault_file: refused ($*)"
}
refused "$example_vault" rq "edupulse_app_secret_key is the example vault's placeholder" \
  "edupulse_app_email_password is the example vault's placeholder" \
  "redis_admin_password is the example vault's placeholder" \
  "redis_acl_users[edupulse-app].password is the example vault's placeholder" \
  "redis_acl_users[rq-worker].password is the example vault's placeholder"
refused "$example_vault" celery "celery_flower_auth_password is the example vault's placeholder" \
  "nginx_flower_auth_password is the example vault's placeholder" \
  "redis_acl_users[celery-worker].password is the example vault's placeholder"
sed -e 's/^vault_redis_app_password: .*/vault_redis_app_password: "change-me-please-9f8e7d6c5b4a"/' \
  -e 's/^vault_redis_admin_password: .*/vault_redis_admin_password: "s3cret"/' "$vault" >"$vault.weak"
refused "$vault.weak" rq 'redis_acl_users[edupulse-app].password contains "change-me"' \
  "redis_admin_password is shorter than 16 characters"

# A multi-host inventory without a shared database is refused before anything changes: each app
# host would keep its own SQLite ledger. Two "hosts" on this machine (a local connection), so
# playbooks/topology.yml can read their facts.
printf 'all:\n  vars:\n    ansible_connection: local\n    ansible_python_interpreter: %s\n  children:\n    web:\n      hosts:\n        web-1:\n    workers:\n      hosts:\n        worker-1:\n' \
  "$(command -v python3)" >"$extra_inventory"
if out=$(ansible-playbook playbooks/topology.yml -i "$extra_inventory" 2>&1); then
  echo "[inventories] web + worker hosts without a database: ACCEPTED (should be refused)"
  status=1
elif grep -q "each would keep its own SQLite ledger" <<<"$out"; then
  echo "[inventories] web + worker hosts without a database: refused"
else
  echo "[inventories] web + worker hosts without a database: failed for another reason"
  echo "$out" | tail -20
  status=1
fi
exit $status
