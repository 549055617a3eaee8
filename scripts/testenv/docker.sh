#!/usr/bin/env bash
# Test environment for rollback-compose: the Docker engine, a Compose tool and
# locally built test images (no image can be pulled, so they are built
# `FROM scratch` around Debian's busybox-static).
#
#   rollback-test/web:v1   busybox httpd on :8080, GET /cgi-bin/health -> 200 "version=v1"
#   rollback-test/web:v2   the bad release: GET /cgi-bin/health -> 500 "version=v2 broken",
#                          so its HEALTHCHECK turns it unhealthy
#   rollback-test/box:1    busybox with its applets installed, `sleep` as the
#                          command: a stand-in for a database container
#
# Every image has a Docker HEALTHCHECK using busybox wget (500ms interval).
# Idempotent: an image is rebuilt only when its build context changed (the
# context's hash is kept as a label). Writes $ROLLBACK_TESTENV_DIR/docker.env.
set -euo pipefail

name=docker
testenv_dir="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
work="$testenv_dir/$name"
mkdir -p "$work"
prefix="${ROLLBACK_TEST_IMAGE_PREFIX:-rollback-test}"

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
apt_updated=
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        "${sudo_cmd[@]}" apt-get update -qq
        apt_updated=1
    fi
    "${sudo_cmd[@]}" apt-get install -y -qq "$@"
}

# 1. The engine must answer.
if ! command -v docker >/dev/null 2>&1; then
    echo "$name: the docker CLI is missing; installing docker.io" >&2
    apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
    echo "$name: the Docker engine does not answer (docker info failed):" >&2
    docker info >&2 || true
    echo "$name: start it (e.g. 'dockerd &' or 'systemctl start docker') and run this script again" >&2
    exit 1
fi

# 2. A Compose tool: the plugin first, then the standalone v1 command.
if docker compose version >/dev/null 2>&1; then
    compose_cmd="docker compose"
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd="docker-compose"
else
    echo "$name: no Compose tool found; installing Debian's docker-compose" >&2
    apt_install docker-compose
    compose_cmd="docker-compose"
fi

# 3. busybox-static, copied into each build context.
busybox=/bin/busybox
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    echo "$name: installing busybox-static" >&2
    apt_install busybox-static
fi
linkage=$(ldd "$busybox" 2>&1 || true)
if ! [ -x "$busybox" ] || ! grep -q "not a dynamic" <<<"$linkage"; then
    echo "$name: $busybox is missing or not statically linked: reinstall busybox-static" >&2
    exit 1
fi

# 4. Build contexts.
healthcheck='HEALTHCHECK --interval=500ms --timeout=2s --retries=3 CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/cgi-bin/health"]'

write_web_context() { # DIR VERSION GOOD(1|0)
    local dir=$1 version=$2 good=$3
    mkdir -p "$dir/www/cgi-bin"
    cp "$busybox" "$dir/busybox"
    if [ "$good" = 1 ]; then
        cat >"$dir/www/cgi-bin/health" <<EOF
#!/bin/sh
printf 'Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nversion=$version\n'
EOF
    else
        cat >"$dir/www/cgi-bin/health" <<EOF
#!/bin/sh
printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nversion=$version broken\n'
EOF
    fi
    chmod 755 "$dir/www/cgi-bin/health"
    echo "version=$version" >"$dir/www/version"
    cat >"$dir/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
ENV APP_VERSION=$version
EXPOSE 8080
STOPSIGNAL SIGKILL
$healthcheck
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
EOF
}

write_box_context() { # DIR
    local dir=$1
    mkdir -p "$dir"
    cp "$busybox" "$dir/busybox"
    cat >"$dir/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "/data", "/backups", "/tmp"]
STOPSIGNAL SIGKILL
HEALTHCHECK --interval=500ms --timeout=2s --retries=3 CMD ["/bin/test", "!", "-e", "/data/corrupt"]
CMD ["/bin/sleep", "2147483647"]
EOF
}

build_image() { # TAG DIR
    local tag=$1 dir=$2 hash current
    hash=$(cd "$dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    current=$(docker image inspect --format '{{ index .Config.Labels "rollback.testenv.hash" }}' "$tag" 2>/dev/null || true)
    if [ "$current" = "$hash" ]; then
        echo "$name: $tag is up to date"
        return
    fi
    echo "$name: building $tag"
    if ! DOCKER_BUILDKIT=0 docker build -q --label "rollback.testenv.hash=$hash" -t "$tag" "$dir" >"$work/build.log" 2>&1; then
        cat "$work/build.log" >&2
        echo "$name: building $tag failed (log above)" >&2
        exit 1
    fi
}

rm -rf "$work/build"
write_web_context "$work/build/web-v1" v1 1
write_web_context "$work/build/web-v2" v2 0
write_box_context "$work/build/box"
build_image "$prefix/web:v1" "$work/build/web-v1"
build_image "$prefix/web:v2" "$work/build/web-v2"
build_image "$prefix/box:1" "$work/build/box"

cat >"$testenv_dir/$name.env" <<EOF
export DOCKER_COMPOSE_CMD="$compose_cmd"
export ROLLBACK_TEST_IMAGE_PREFIX="$prefix"
export ROLLBACK_TEST_WEB_GOOD="$prefix/web:v1"
export ROLLBACK_TEST_WEB_BAD="$prefix/web:v2"
export ROLLBACK_TEST_BOX="$prefix/box:1"
EOF
echo "$name: ready ($compose_cmd); wrote $testenv_dir/$name.env"
