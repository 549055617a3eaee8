#!/usr/bin/env bash
# Prometheus (Debian's package) for the trigger tests. The tests start their
# own Prometheus process with a throwaway config that scrapes an exporter they
# control, so this script only installs the binary and says where it is.
set -euo pipefail
dir="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
mkdir -p "$dir"

if ! command -v prometheus >/dev/null 2>&1; then
    echo "prometheus.sh: installing Debian's prometheus package"
    export DEBIAN_FRONTEND=noninteractive
    # The package's service is not wanted here: policy-rc.d keeps it from starting.
    printf '#!/bin/sh\nexit 101\n' > /tmp/rollback-policy-rc.d
    chmod +x /tmp/rollback-policy-rc.d
    apt-get update -qq
    POLICYRCD=/tmp/rollback-policy-rc.d apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "export PROMETHEUS_BIN=$(command -v prometheus)" > "$dir/prometheus.env"
echo "prometheus.sh: $(prometheus --version 2>&1 | head -1)"
