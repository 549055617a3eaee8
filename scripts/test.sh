#!/usr/bin/env bash
# The whole test suite: installs prerequisites, then runs every crate's tests.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo test --workspace --locked
