#!/usr/bin/env bash
# The whole test suite: installs prerequisites, starts the test servers
# (scripts/testenv/*.sh), then runs every crate's tests. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

export ROLLBACK_TESTENV_DIR="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
mkdir -p "$ROLLBACK_TESTENV_DIR"
for env_script in scripts/testenv/*.sh; do
    [ -e "$env_script" ] || continue
    name=$(basename "$env_script" .sh)
    echo "test.sh: starting $name"
    "$env_script"
    # shellcheck disable=SC1090
    source "$ROLLBACK_TESTENV_DIR/$name.env"
done

cargo test --workspace --locked --no-fail-fast
