#!/usr/bin/env bash
# Run Molecule scenarios side by side: `run-scenarios.sh JOBS SCENARIO...`.
#
# Each scenario has containers of its own (named after it) and its own apt cache directory, so
# they do not interfere; most of a scenario's time is waiting (package downloads, SMTP outages,
# claim and visibility timeouts), so a few at once finish far sooner than one after another.
# Each writes .cache/molecule-logs/<scenario>.log; the log of a failed scenario is printed.
#
# Longest first: the scenarios start in the order of their durations measured by the last run
# on this machine (.cache/molecule-logs/durations, written at the end), in the given order when
# none was measured (the Makefile lists them longest first, as measured in CI). The longest
# scenario bounds the whole run, so it must never wait for a free slot.
set -uo pipefail

jobs=${1:?usage: run-scenarios.sh JOBS SCENARIO...}
shift
logs=.cache/molecule-logs
durations=$logs/durations
mkdir -p "$logs"

# The scenarios, longest measured first; unmeasured ones keep their place before the measured.
ordered() {
  local index=0 scenario seconds
  for scenario in "$@"; do
    seconds=$(awk -v s="$scenario" '$1 == s { print $2 }' "$durations" 2>/dev/null | tail -1)
    printf '%s %06d %s\n' "${seconds:-999999}" "$index" "$scenario"
    index=$((index + 1))
  done | sort -k1,1nr -k2,2n | awk '{ print $3 }'
}

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
  echo "$((SECONDS - begin))" >"$logs/$scenario.seconds"
}

mapfile -t scenarios < <(ordered "$@")
echo "[molecule] order (longest first): ${scenarios[*]}; $jobs at a time"
for scenario in "${scenarios[@]}"; do
  rm -f "$logs/$scenario.status" "$logs/$scenario.seconds"
done
begin=$SECONDS
for scenario in "${scenarios[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs)); do
    wait -n
  done
  echo "[molecule] starting $scenario at $((SECONDS - begin)) s"
  run_one "$scenario" &
done
wait

failed=()
for scenario in "${scenarios[@]}"; do
  [[ "$(cat "$logs/$scenario.status" 2>/dev/null)" == passed ]] || failed+=("$scenario")
done
for scenario in "${failed[@]}"; do
  echo "===== $logs/$scenario.log (last 200 lines) ====="
  tail -n 200 "$logs/$scenario.log"
done

# Per-scenario durations, longest first; kept for the next run's order (passed scenarios only:
# a failed one may have stopped early).
echo "[molecule] durations (s), $jobs at a time, $((SECONDS - begin)) s in all:"
for scenario in "${scenarios[@]}"; do
  printf '%s %s %s\n' "$(cat "$logs/$scenario.seconds" 2>/dev/null || echo 0)" "$scenario" \
    "$(cat "$logs/$scenario.status" 2>/dev/null || echo unknown)"
done | sort -k1,1nr | awk '{ printf "  %-16s %6d s  %s\n", $2, $1, $3 }'
{
  # Other scenarios' measurements stay; this run's replace theirs.
  awk -v run=" ${scenarios[*]} " 'index(run, " " $1 " ") == 0' "$durations" 2>/dev/null
  for scenario in "${scenarios[@]}"; do
    if [[ "$(cat "$logs/$scenario.status" 2>/dev/null)" == passed ]]; then
      echo "$scenario $(cat "$logs/$scenario.seconds")"
    else
      awk -v s="$scenario" '$1 == s' "$durations" 2>/dev/null | tail -1
    fi
  done
} >"$durations.new"
mv "$durations.new" "$durations"

# What failed, last of all: CI keeps only the tail of its output, which would otherwise end with
# the recap of a scenario and not say which test or task it was. The lines of pytest's short
# summary (FAILED/ERROR with the assertion), Ansible's failed tasks and Molecule's errors, colours
# removed. A verify step whose pytest never printed its closing tally (killed, or crashed) gets
# the last test pytest named (-v names each as it starts) and its last lines instead.
# Bytes, whatever the locale: Molecule's box character is three of them.
failure_summary() {
  LC_ALL=C sed 's/\x1b\[[0-9;]*m//g; s/^[[:space:]]*\(│\|[|]\)[[:space:]]*//' "$1" | LC_ALL=C awk '
    /Executing Testinfra tests/ { pytest = 1; tally = 0; kept = 0; test = ""; next }
    pytest && /^=+ .*[0-9]+ (passed|failed|errors?|skipped|deselected).* in [0-9.]+s/ { tally = 1 }
    pytest && /::test/ { test = $0 }
    pytest && /Verifier tests failed/ && !tally {
      print "pytest ended without its summary (killed, or it crashed); the last test it named:"
      print "  " test
      print "and its last lines:"
      for (i = (kept > 15 ? kept - 15 : 0); i < kept; i++) print "  " last[i % 15]
      pytest = 0
    }
    pytest && !/Verifier tests failed/ && NF { last[kept % 15] = $0; kept++ }
    /^TASK \[/ { task = $0; more = 0; next }
    /^FAILED - RETRYING/ { more = 0; next }
    /^fatal: |FAILED! =>/ { if (task != "") print task; task = ""; print; more = 0; next }
    /Executed: Failed/ { print; more = 0; next }
    /^INTERNALERROR>/ { if (internal++ < 10) print; more = 0; next }
    /^(FAILED|ERROR)( [^ ]|$)/ { print; more = 3; next }
    /^ERROR  / { print; more = 0; next }
    more > 0 && !/^(=|_|PASSED|SKIPPED)/ { print "  " $0; more--; next }
    { more = 0 }
  ' | cut -c1-400 | tail -n 40
}
for scenario in "${failed[@]}"; do
  echo "[molecule] $scenario: what failed"
  failure_summary "$logs/$scenario.log" | sed 's/^/  /'
done

if ((${#failed[@]})); then
  echo "[molecule] failed: ${failed[*]}"
  exit 1
fi
echo "[molecule] all passed: ${scenarios[*]}"
