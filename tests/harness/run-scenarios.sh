#!/usr/bin/env bash
# Run Molecule scenarios side by side: `run-scenarios.sh JOBS SCENARIO...`.
#
# Each scenario has containers of its own (named after it) and its own apt cache directory, so
# they do not interfere; most of a scenario's time is waiting (package downloads, SMTP outages,
# claim and visibility timeouts), so a few at once finish far sooner than one after another.
# Each writes .cache/molecule-logs/<scenario>.log; the log of a failed scenario is printed.
set -uo pipefail

jobs=${1:?usage: run-scenarios.sh JOBS SCENARIO...}
shift
logs=.cache/molecule-logs
mkdir -p "$logs"

run_one() {
  local scenario=$1
  local begin=$SECONDS
  if molecule test -s "$scenario" >"$logs/$scenario.log" 2>&1; then
    echo "[molecule] $scenario passed in $((SECONDS - begin)) s"
    echo passed >"$logs/$scenario.status"
  else
    echo "[molecule] $scenario FAILED after $((SECONDS - begin)) s (log: $logs/$scenario.log)"
    echo failed >"$logs/$scenario.status"
  fi
}

for scenario in "$@"; do
  rm -f "$logs/$scenario.status"
done
for scenario in "$@"; do
  while (($(jobs -rp | wc -l) >= jobs)); do
    wait -n
  done
  echo "[molecule] starting $scenario"
  run_one "$scenario" &
done
wait

failed=()
for scenario in "$@"; do
  [[ "$(cat "$logs/$scenario.status" 2>/dev/null)" == passed ]] || failed+=("$scenario")
done
for scenario in "${failed[@]}"; do
  echo "===== $logs/$scenario.log (last 200 lines) ====="
  tail -n 200 "$logs/$scenario.log"
done
if ((${#failed[@]})); then
  echo "[molecule] failed: ${failed[*]}"
  exit 1
fi
echo "[molecule] all passed: $*"
