#!/usr/bin/env bash
# Installs what the test suite needs that a fresh machine may lack. Idempotent:
# a second run installs nothing.
set -euo pipefail

need_apt=()
command -v git >/dev/null 2>&1 || need_apt+=(git)

if ((${#need_apt[@]})); then
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}"
fi
echo "setup: prerequisites present"
