#!/usr/bin/env bash
# A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
# on 127.0.0.1 for rollback-k8s's integration tests.
#
# No registry ships kube-apiserver, so this builds it from Debian's `kubernetes`
# source package (v1.20.2 with vendor/), once, and caches the binaries under
# /var/cache/rollback-k8s/<source-version>/. See /work/shared/K8S_TESTENV.md.
# kubectl 1.20 (Debian's kubernetes-client) is unpacked next to them: it is the
# peer the tests compare against, without replacing any kubectl on the machine.
#
# Idempotent: a second run reuses the cached binaries and the running processes.
# Writes KUBECONFIG, KUBECTL_1_20 and ROLLBACK_K8S_TEST to
# $ROLLBACK_TESTENV_DIR/k8s.env.
#
# Ports (all 127.0.0.1): etcd 23791 (peer 23801), kube-apiserver 16443,
# kube-controller-manager 16457 (secure port; the insecure one is off).
set -euo pipefail

TESTENV_DIR="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
DIR="$TESTENV_DIR/k8s"
CACHE="${ROLLBACK_K8S_CACHE:-/var/cache/rollback-k8s}"
ETCD_PORT=23791
ETCD_PEER_PORT=23801
API_PORT=16443
CM_PORT=16457
ENV_FILE="$TESTENV_DIR/k8s.env"

log() { echo "k8s.sh: $*" >&2; }
die() { echo "k8s.sh: error: $*" >&2; exit 1; }

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

mkdir -p "$DIR/logs" "$DIR/pki"
"${sudo_cmd[@]}" mkdir -p "$CACHE"
[ -w "$CACHE" ] || "${sudo_cmd[@]}" chown "$(id -u):$(id -g)" "$CACHE"

# ---------------------------------------------------------------- packages
need=()
for pkg in golang-go etcd-server rsync dpkg-dev openssl curl \
    golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
    "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian's etcd-server package starts a system etcd on 2379; ours uses its own ports.

# ------------------------------------------- private deb-src list (read from the system's own)
APT_DIR="$CACHE/apt"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
SRC_LIST="$APT_DIR/deb-src.list"
if [ ! -s "$SRC_LIST" ]; then
    : >"$SRC_LIST.tmp"
    # deb822 files: every stanza with Types: deb becomes a deb-src line.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
                    n = split(uris, u, " "); m = split(suites, s, " ")
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) {
                        opt = (signed != "") ? "[signed-by=" signed "] " : ""
                        print "deb-src " opt u[i] " " s[j] " " comps
                    }
                }
                types = ""; uris = ""; suites = ""; comps = ""; signed = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^#/ { next }
            /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0; next }
            /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0; next }
            /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0; next }
            /^Components:/ { sub(/^Components:[[:space:]]*/, ""); comps = $0; next }
            /^Signed-By:/ { sub(/^Signed-By:[[:space:]]*/, ""); signed = $0; next }
            END { flush() }
        ' "$f" >>"$SRC_LIST.tmp"
    done
    # one-line format: deb lines become deb-src lines.
    if [ -f /etc/apt/sources.list ]; then
        sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list >>"$SRC_LIST.tmp"
    fi
    # Only Debian archives carry the kubernetes source; keep entries whose suite is a Debian one.
    grep -E ' (bookworm|bookworm-updates|bookworm-security|stable|stable-updates|stable-security)( |$)' \
        "$SRC_LIST.tmp" >"$SRC_LIST" || true
    rm -f "$SRC_LIST.tmp"
    [ -s "$SRC_LIST" ] || die "could not derive a deb-src list from /etc/apt/sources.list(.d); add a Debian 'deb' entry there"
fi
APT_OPTS=(
    -o "Dir::Etc::SourceList=$SRC_LIST"
    -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
)
if ! ls "$APT_DIR/lists/"*Sources* >/dev/null 2>&1; then
    log "fetching source indexes into $APT_DIR/lists"
    apt-get "${APT_OPTS[@]}" update -qq
fi
SRC_VERSION=$(apt-cache "${APT_OPTS[@]}" showsrc kubernetes 2>/dev/null \
    | sed -n 's/^Version: //p' | sort -V | tail -n1)
[ -n "$SRC_VERSION" ] || die "no 'kubernetes' source package in $SRC_LIST; check the Debian entries in /etc/apt"
UPSTREAM=${SRC_VERSION%%-*}
UPSTREAM=${UPSTREAM##*really}
VCACHE="$CACHE/$SRC_VERSION"
mkdir -p "$VCACHE"
APISERVER="$VCACHE/kube-apiserver"
CONTROLLER_MANAGER="$VCACHE/kube-controller-manager"
KUBECTL="$VCACHE/kubectl"

# ---------------------------------------------------------------- build (cached)
if [ ! -x "$APISERVER" ] || [ ! -x "$CONTROLLER_MANAGER" ]; then
    log "building kube-apiserver and kube-controller-manager $UPSTREAM (about 4 minutes cold)"
    BUILD="$VCACHE/build"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    (cd "$BUILD" && apt-get "${APT_OPTS[@]}" source --download-only -qq "kubernetes=$SRC_VERSION")
    dsc=$(ls "$BUILD"/kubernetes_*.dsc | head -n1)
    (cd "$BUILD" && dpkg-source --no-check -x "$dsc" src >/dev/null)
    TREE="$BUILD/src"
    # With Go >= 1.18 the vendored reflect2 1.0.1 crashes kube-apiserver
    # ("fatal error: fault"): take reflect2 1.0.2 and json-iterator 1.1.12 from Debian.
    for pair in "github.com/modern-go/reflect2" "github.com/json-iterator/go"; do
        from="/usr/share/gocode/src/$pair"
        to="$TREE/vendor/$pair"
        [ -d "$from" ] || die "missing $from (golang-github-* -dev package)"
        rm -rf "$to"
        mkdir -p "$to"
        rsync -a --include='*/' --include='*.go' --include='*.s' --exclude='*_test.go' --exclude='*' \
            --prune-empty-dirs "$from/" "$to/"
    done
    BUILD_HOME=$(mktemp -d)
    (
        cd "$TREE"
        export HOME="$BUILD_HOME" GOFLAGS="" KUBE_GIT_VERSION="v$UPSTREAM" KUBE_GIT_TREE_STATE=clean \
            KUBE_GIT_COMMIT=0000000000000000000000000000000000000000
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$DIR/logs/build.log" 2>&1
    ) || { tail -n 40 "$DIR/logs/build.log" >&2; chmod -R u+w "$BUILD_HOME"; rm -rf "$BUILD_HOME"; die "build failed; see $DIR/logs/build.log"; }
    out="$TREE/_output/local/go/bin"
    [ -x "$out/kube-apiserver" ] || out=$(dirname "$(find "$TREE/_output" -name kube-apiserver -type f | head -n1)")
    install -m 0755 "$out/kube-apiserver" "$APISERVER.tmp" && mv "$APISERVER.tmp" "$APISERVER"
    install -m 0755 "$out/kube-controller-manager" "$CONTROLLER_MANAGER.tmp" && mv "$CONTROLLER_MANAGER.tmp" "$CONTROLLER_MANAGER"
    chmod -R u+w "$BUILD_HOME" "$BUILD" 2>/dev/null || true
    rm -rf "$BUILD_HOME" "$BUILD"
fi

# ------------------------------------------------ kubectl 1.20 (the peer), unpacked privately
if [ ! -x "$KUBECTL" ]; then
    log "unpacking Debian's kubernetes-client $SRC_VERSION"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get -o APT::Sandbox::User=root download -qq "kubernetes-client=$SRC_VERSION" \
        || { "${sudo_cmd[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq \
             && apt-get -o APT::Sandbox::User=root download -qq "kubernetes-client=$SRC_VERSION"; })
    dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/root"
    install -m 0755 "$tmp/root/usr/bin/kubectl" "$KUBECTL"
    rm -rf "$tmp"
fi

# ---------------------------------------------------------------- PKI and tokens
PKI="$DIR/pki"
if [ ! -s "$PKI/admin.token" ]; then
    (
        cd "$PKI"
        umask 077
        openssl genrsa -out ca.key 2048 2>/dev/null
        openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=rollback-test-ca" -out ca.crt 2>/dev/null
        openssl genrsa -out apiserver.key 2048 2>/dev/null
        openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile apiserver.ext -out apiserver.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        admin=$(openssl rand -hex 24)
        cm=$(openssl rand -hex 24)
        printf '%s,admin,admin,system:masters\n%s,system:kube-controller-manager,cm,system:masters\n' "$admin" "$cm" >tokens.csv
        printf '%s' "$cm" >cm.token
        printf '%s' "$admin" >admin.token
    )
fi

write_kubeconfig() { # file token
    local ca
    ca=$(base64 -w0 <"$PKI/ca.crt")
    umask 077
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rollback-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: $3
  user:
    token: $2
contexts:
- name: rollback-test
  context:
    cluster: rollback-test
    user: $3
    namespace: default
current-context: rollback-test
EOF
}
write_kubeconfig "$DIR/kubeconfig" "$(cat "$PKI/admin.token")" admin
write_kubeconfig "$DIR/cm.kubeconfig" "$(cat "$PKI/cm.token")" controller-manager

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() { # name pidfile cmd...
    local name=$1 pidfile=$2
    shift 2
    setsid nohup "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

# ---------------------------------------------------------------- etcd
if ! alive "$DIR/etcd.pid"; then
    log "starting etcd on 127.0.0.1:$ETCD_PORT"
    rm -rf "$DIR/etcd-data"
    start etcd "$DIR/etcd.pid" etcd --name rollback-test --data-dir "$DIR/etcd-data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "rollback-test=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "http://127.0.0.1:23811"
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null || die "etcd did not start; see $DIR/logs/etcd.log"
    # A fresh etcd means fresh API state: restart the apiserver too.
    if alive "$DIR/apiserver.pid"; then kill "$(cat "$DIR/apiserver.pid")"; rm -f "$DIR/apiserver.pid"; sleep 1; fi
fi

# ---------------------------------------------------------------- kube-apiserver
ready() {
    curl -fsS --cacert "$PKI/ca.crt" -H "Authorization: Bearer $(cat "$PKI/admin.token")" \
        "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}
if ! alive "$DIR/apiserver.pid"; then
    log "starting kube-apiserver on 127.0.0.1:$API_PORT"
    start apiserver "$DIR/apiserver.pid" "$APISERVER" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
        --endpoint-reconciler-type=none \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --token-auth-file="$PKI/tokens.csv" \
        --authorization-mode=RBAC \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --api-audiences=https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range=10.96.0.0/16 \
        --cert-dir="$DIR/pki/apiserver-certs"
fi
for _ in $(seq 1 300); do
    ready && break
    alive "$DIR/apiserver.pid" || { tail -n 30 "$DIR/logs/apiserver.log" >&2; die "kube-apiserver exited; see $DIR/logs/apiserver.log"; }
    sleep 0.2
done
ready || die "kube-apiserver not ready after 60 s; see $DIR/logs/apiserver.log"

# ---------------------------------------------------------------- kube-controller-manager
if ! alive "$DIR/controller-manager.pid"; then
    log "starting kube-controller-manager (secure port 127.0.0.1:$CM_PORT)"
    start controller-manager "$DIR/controller-manager.pid" "$CONTROLLER_MANAGER" \
        --kubeconfig="$DIR/cm.kubeconfig" \
        --authentication-kubeconfig="$DIR/cm.kubeconfig" --authorization-kubeconfig="$DIR/cm.kubeconfig" \
        --port=0 --bind-address=127.0.0.1 --secure-port="$CM_PORT" \
        --cert-dir="$DIR/pki/cm-certs" \
        --leader-elect=false \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --controllers='*,-nodelifecycle' \
        --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 --concurrent-endpoint-syncs=10
fi
# Pods are rejected until the token controller has made the default token secret.
for _ in $(seq 1 150); do
    "$KUBECTL" --kubeconfig "$DIR/kubeconfig" -n default get serviceaccount default >/dev/null 2>&1 && break
    alive "$DIR/controller-manager.pid" || die "kube-controller-manager exited; see $DIR/logs/controller-manager.log"
    sleep 0.2
done

cat >"$ENV_FILE" <<EOF
export KUBECONFIG=$DIR/kubeconfig
export KUBECTL_1_20=$KUBECTL
export ROLLBACK_K8S_TEST=1
EOF
log "ready: kube-apiserver https://127.0.0.1:$API_PORT ($UPSTREAM); source $ENV_FILE"
