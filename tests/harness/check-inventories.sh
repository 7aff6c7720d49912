#!/usr/bin/env bash
# The example inventories pass site.yml's validation in every queue mode (and both Celery
# brokers) with nothing but the SMTP password in the vault: every internal credential is
# generated (roles/edupulse), here into a scratch directory, once, and read again by the next
# run. A value the user gives is refused when it is the example vault's public placeholder,
# contains "change-me" or is a short password, naming the variable.
# inventories/cluster is the multi-host example (web, data, two workers).
# playbooks/preflight.yml only asserts on variables (no module runs; the connection is local
# all the same), so no host is contacted.
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
extra_inventory=$(mktemp --suffix=.yml)
vault=$(mktemp --suffix=.yml)
credentials=$(mktemp -d)
# The cluster's CA as a user makes it beside its inventory (files/README.md), here a stand-in:
# the app role refuses a CA file that is not on the controller.
cluster_ca=$(mktemp --suffix=.crt)
trap 'rm -rf "$extra_inventory" "$vault" "$credentials" "$cluster_ca"' EXIT
cluster_files=(-e '{"redis_tls_certificate": "-----BEGIN CERTIFICATE-----\n(placeholder)\n-----END CERTIFICATE-----"}'
  -e "{\"edupulse_app_extra_ca_certs\": [\"$cluster_ca\"]}")
example_vault=inventories/production/group_vars/all/vault.yml.example
# The vault as a user fills it in: the SMTP password (and the cluster's TLS key), nothing else.
python3 - "$vault" <<'PY2'
import json, secrets, sys
with open(sys.argv[1], "w", encoding="utf-8") as vault:
    vault.write(f"vault_edupulse_app_email_password: {json.dumps(secrets.token_hex(8))}\n")
    vault.write('vault_redis_tls_certificate_key: "-----BEGIN PRIVATE KEY-----\\n(placeholder)\\n-----END PRIVATE KEY-----"\n')
PY2
preflight=(ansible-playbook playbooks/preflight.yml -e ansible_connection=local -e "edupulse_credentials_dir=$credentials")
for inventory in inventories/production inventories/staging inventories/cluster; do
  for variant in batch rq celery:redis celery:rabbitmq; do
    mode=${variant%%:*}
    broker=${variant#*:}
    [ "$broker" = "$variant" ] && broker=redis
    extra=(-e "queue_mode=$mode" -e "celery_broker=$broker")
    # The cluster's TLS certificate and CA are made per deployment (inventories/cluster/files/README.md).
    if [ "$inventory" = inventories/cluster ]; then
      extra+=("${cluster_files[@]}")
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
    if out=$("${preflight[@]}" "${inventories[@]}" -e "@$vault" "${extra[@]}" 2>&1); then
      echo "[inventories] $inventory $variant: valid"
    else
      echo "[inventories] $inventory $variant: INVALID"
      echo "$out" | grep -E 'fatal|msg' | head -20
      status=1
    fi
  done
done

# The generated credentials: one file each, owner-only, and the same values on the next run.
generated=$(find "$credentials" -type f | wc -l)
loose=$(find "$credentials" -type f ! -perm 0600 | wc -l)
before=$(cat "$credentials"/* | sha256sum)
"${preflight[@]}" -i inventories/production/hosts.yml -e "@$vault" -e queue_mode=celery >/dev/null 2>&1 || true
after=$(cat "$credentials"/* | sha256sum)
if [ "$generated" -ge 9 ] && [ "$loose" -eq 0 ] && [ "$before" = "$after" ]; then
  echo "[inventories] generated credentials: $generated files, mode 0600, unchanged by a later run"
else
  echo "[inventories] generated credentials: $generated files, $loose not 0600, reused: $([ "$before" = "$after" ] && echo yes || echo no)"
  status=1
fi

# refused MODE EXPECTED... -- ARGS: preflight must fail and name each EXPECTED text.
refused() {
  local mode=$1 out flat expected=()
  shift
  while [ "$1" != -- ]; do expected+=("$1"); shift; done
  shift
  if out=$("${preflight[@]}" -i inventories/production/hosts.yml -e "queue_mode=$mode" "$@" 2>&1); then
    echo "[inventories] production $mode with $*: ACCEPTED (should be refused)"
    status=1
    return
  fi
  # The messages as one line: the YAML callback folds long ones at any space.
  flat=$(tr -s ' \n' ' ' <<<"$out")
  for text in "${expected[@]}"; do
    if ! grep -qF -- "$text" <<<"$flat"; then
      echo "[inventories] production $mode with $*: refused, but without '$text'"
      echo "$out" | grep -E 'ERROR|msg' | head -5
      status=1
      return
    fi
  done
  echo "[inventories] production $mode: refused (${expected[*]})"
}
refused rq "edupulse_app_email_password is the example vault's placeholder" -- -e "@$example_vault"
refused rq 'redis_acl_users[edupulse-app].password contains "change-me"' \
  "redis_admin_password is shorter than 16 characters" -- -e "@$vault" \
  -e edupulse_redis_app_password=change-me-please-9f8e7d6c5b4a -e edupulse_redis_admin_password=s3cret
refused celery 'celery_flower_auth_password contains "change-me"' 'nginx_flower_auth_password contains "change-me"' \
  -- -e "@$vault" -e edupulse_flower_password=change-me-flower-0123456789
refused rq "edupulse_app_secret_key" -- -e "@$vault" -e edupulse_app_secret_key=short
# The shared facts (roles/edupulse) are type-checked once per host by preflight, not by Ansible
# at each of the ~10 loads of the role: a value of the wrong type is still refused, naming it.
refused rq "edupulse_postgresql_allow_plaintext" "bool" -- -e "@$vault" -e edupulse_postgresql_allow_plaintext=perhaps
# What the app role copies from the controller must be there (before any host changes, not when
# the copy fails halfway through a run).
refused batch "Not on the controller: /nonexistent/app" -- -e "@$vault" -e edupulse_app_local_path=/nonexistent/app
# A line break in a secret would end its line of an env file (systemd's EnvironmentFile=).
refused rq "edupulse_app_email_password contains a line break" \
  'redis_acl_users[edupulse-app].password contains a line break' -- -e "@$vault" \
  -e '{"edupulse_app_email_password": "two\nlines-0123456789", "edupulse_redis_app_password": "two\nlines-0123456789abcdef"}'

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

# The database on another host than an app host is reached over verified TLS only: without
# postgresql_tls_certificate (sslmode would be prefer, pg_hba plain `host` lines) the run is
# refused naming it, unless edupulse_postgresql_allow_plaintext says the network is private.
# An app host and a database host on this machine, topology then preflight, as site.yml runs
# them; and inventories/cluster (which sets a certificate) the same way. Facts stay in memory.
# topology_case NAME EXPECTED|'' ARGS...: refused naming EXPECTED, or ('') accepted.
topology_case() {
  local name=$1 expected=$2 out
  shift 2
  if out=$(ANSIBLE_CACHE_PLUGIN=memory ansible-playbook playbooks/topology.yml playbooks/preflight.yml \
      -e ansible_connection=local -e "ansible_python_interpreter=$(command -v python3)" \
      -e "edupulse_credentials_dir=$credentials" -e "@$vault" "$@" 2>&1); then
    if [ -z "$expected" ]; then
      echo "[inventories] $name: valid"
    else
      echo "[inventories] $name: ACCEPTED (should be refused)"
      status=1
    fi
  elif [ -n "$expected" ] && grep -qF -- "$expected" <<<"$(tr -s ' \n' ' ' <<<"$out")"; then
    echo "[inventories] $name: refused ($expected)"
  else
    echo "[inventories] $name: INVALID"
    echo "$out" | grep -E 'fatal|msg|ERROR' | head -10
    status=1
  fi
}
printf 'all:\n  children:\n    web:\n      hosts:\n        app-1: {edupulse_private_address: 10.0.0.11}\n    workers:\n      hosts:\n        app-1:\n    database:\n      hosts:\n        db-1: {edupulse_private_address: 10.0.0.20}\n' \
  >"$extra_inventory"
certificate='{"postgresql_tls_certificate": "-----BEGIN CERTIFICATE-----\n(placeholder)\n-----END CERTIFICATE-----", "postgresql_tls_certificate_key": "-----BEGIN PRIVATE KEY-----\n(placeholder)\n-----END PRIVATE KEY-----"}'
topology_case "database on another host without a certificate" "postgresql_tls_certificate" \
  -i "$extra_inventory" -e queue_mode=batch
topology_case "database on another host, plaintext allowed" "" \
  -i "$extra_inventory" -e queue_mode=batch -e edupulse_postgresql_allow_plaintext=true
topology_case "database on another host with a certificate" "" -i "$extra_inventory" -e queue_mode=batch -e "$certificate"
# (Every host's private address given, so that no default route of this machine is needed.)
topology_case "inventories/cluster with its topology" "" -i inventories/cluster/hosts.yml -e queue_mode=celery \
  -e edupulse_private_address=10.0.0.99 "${cluster_files[@]}"
exit $status
