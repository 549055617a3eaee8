#!/usr/bin/env bash
# Headless Chromium (Debian's package) for the test that renders a drill's
# HTML report and looks at the picture.
set -euo pipefail
dir="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
mkdir -p "$dir"

find_chromium() { command -v chromium || command -v chromium-browser || true; }
if [ -z "$(find_chromium)" ]; then
    echo "chromium.sh: installing Debian's chromium package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
echo "export CHROMIUM_BIN=$(find_chromium)" > "$dir/chromium.env"
echo "chromium.sh: $("$(find_chromium)" --version 2>/dev/null | head -1)"
