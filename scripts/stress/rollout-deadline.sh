#!/usr/bin/env bash
# Stress for k8s.wait_rollout after undoing a rollout that ran out of time
# (issue "Trust", item 8): runs the integration test
# a_rollout_that_never_becomes_available_fails_at_its_deadline_with_the_reason
# REPS times (default 50) while BUSY busy loops (default: one per core) keep
# the CPUs loaded, and prints how many false failures it saw: a wait after the
# undo that failed on ProgressDeadlineExceeded, split by which ReplicaSet the
# condition named (the timed-out one: a leftover; the undo's: a new deadline).
#
#   scripts/stress/rollout-deadline.sh [REPS]      (BUSY=N to change the load)
#
# Needs the control plane of scripts/testenv/k8s.sh. The busy loops are this
# script's own children and are ended by pid when it exits.
set -euo pipefail

REPS=${1:-50}
BUSY=${BUSY:-$(nproc)}
TEST=a_rollout_that_never_becomes_available_fails_at_its_deadline_with_the_reason
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENV_FILE="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}/k8s.env"
[ -f "$ENV_FILE" ] || { echo "no $ENV_FILE: run scripts/testenv/k8s.sh first" >&2; exit 2; }
# shellcheck disable=SC1090
. "$ENV_FILE"
export CI=1 RUST_BACKTRACE=0

cd "$ROOT"
bin=$(cargo test -p rollback-k8s --test rollout --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*rollout-[^"]*\)".*/\1/p' | tail -n1)
[ -x "$bin" ] || { echo "could not build the rollout test binary" >&2; exit 2; }

logs=$(mktemp -d)
pids=()
stop_load() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_load EXIT
for _ in $(seq 1 "$BUSY"); do
    (while :; do :; done) &
    pids+=($!)
done

passed=0 leftover=0 undo_deadline=0 other=0
start=$(date +%s)
for i in $(seq 1 "$REPS"); do
    log="$logs/run-$i.log"
    if "$bin" --exact "$TEST" --test-threads 1 >"$log" 2>&1; then
        passed=$((passed + 1))
        rm -f "$log"
        continue
    fi
    line=$(grep -m1 "the wait after the undo failed" "$log" || true)
    if [ -z "$line" ]; then
        other=$((other + 1))
        echo "run $i: failed elsewhere, see $log" >&2
        continue
    fi
    named=$(sed -n 's/.*ReplicaSet "\([^"]*\)" has timed out.*/\1/p' <<<"$line" | head -n1)
    target=$(sed -n 's/.*the undo went to ReplicaSet Some("\([^"]*\)").*/\1/p' <<<"$line")
    if [ -n "$named" ] && [ "$named" = "$target" ]; then
        undo_deadline=$((undo_deadline + 1))
    else
        leftover=$((leftover + 1))
    fi
    echo "run $i: $line" >&2
done
elapsed=$(( $(date +%s) - start ))
stop_load
trap - EXIT

false_failures=$((leftover + undo_deadline))
echo "rollout-deadline stress: $REPS repetitions in ${elapsed}s with $BUSY busy loops on $(nproc) cores:" \
    "$passed passed, $false_failures false failures ($leftover on the timed-out ReplicaSet's leftover condition," \
    "$undo_deadline on a new deadline of the undo's ReplicaSet), $other other failures (logs in $logs)"
[ "$false_failures" -eq 0 ] && [ "$other" -eq 0 ]
