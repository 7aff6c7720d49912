#!/usr/bin/env bash
# The example inventories pass site.yml's validation in every queue mode (and both Celery
# brokers), with the vault example's placeholder secrets: a copy of them is a working start.
# playbooks/preflight.yml only asserts on variables (no module runs), so no host is contacted.
set -euo pipefail
cd "$(dirname "$0")/../.."
status=0
extra_inventory=$(mktemp --suffix=.yml)
trap 'rm -f "$extra_inventory"' EXIT
for inventory in inventories/production inventories/staging; do
  for variant in batch rq celery:redis celery:rabbitmq; do
    mode=${variant%%:*}
    broker=${variant#*:}
    [ "$broker" = "$variant" ] && broker=redis
    extra=(-e "queue_mode=$mode" -e "celery_broker=$broker")
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
exit $status
