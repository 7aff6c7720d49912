#!/usr/bin/env bash
# The example inventories pass site.yml's validation in every queue mode (and both Celery
# brokers), with the vault example's placeholder secrets: a copy of them is a working start.
# inventories/cluster is the multi-host example (web, data, two workers).
# playbooks/preflight.yml only asserts on variables (no module runs), so no host is contacted.
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
extra_inventory=$(mktemp --suffix=.yml)
trap 'rm -f "$extra_inventory"' EXIT
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
    if out=$(ansible-playbook playbooks/preflight.yml "${inventories[@]}" \
        -e "@$inventory/group_vars/all/vault.yml.example" "${extra[@]}" 2>&1); then
      echo "[inventories] $inventory $variant: valid"
    else
      echo "[inventories] $inventory $variant: INVALID"
      echo "$out" | grep -E 'fatal|msg' | head -20
      status=1
    fi
  done
done

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
