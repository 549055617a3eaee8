#!/usr/bin/env bash
# A real SMTP server for rollback-notify's email tests: aiosmtpd (from PyPI, in
# a virtualenv) on 127.0.0.1, with three listeners sharing one mailbox folder:
#
#   SMTP_PORT           plain SMTP, no auth (a local relay)
#   SMTP_STARTTLS_PORT  STARTTLS required, then AUTH PLAIN/LOGIN with
#                       SMTP_USER / SMTP_PASSWORD
#   SMTP_TLS_PORT       implicit TLS (SMTPS), no auth
#
# TLS uses a throwaway CA and a server certificate for `localhost` /
# 127.0.0.1, made by openssl; SMTP_CA_FILE is the CA to trust. Every message received is stored in
# SMTP_MAILBOX_DIR as NAME.eml (the raw message) and NAME.json (envelope:
# mail_from, rcpt_tos, listener), written before the server answers 250.
#
# Idempotent: a second run reuses the virtualenv, certificate and the running
# server, and rewrites $ROLLBACK_TESTENV_DIR/smtp.env.
set -euo pipefail

base="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
dir="$base/smtp"
env_file="$base/smtp.env"
venv="$dir/venv"
mailbox="$dir/mailbox"
mkdir -p "$dir" "$mailbox"

python=""
for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$(command -v "$candidate"); break; fi
done
if [ -z "$python" ]; then
    echo "smtp.sh: installing python3" >&2
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq python3 python3-venv
    python=$(command -v python3)
fi

# 1. aiosmtpd in a virtualenv (PyPI).
if ! "$venv/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "smtp.sh: installing aiosmtpd into $venv" >&2
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        export DEBIAN_FRONTEND=noninteractive
        "${sudo_cmd[@]}" apt-get update -qq
        "${sudo_cmd[@]}" apt-get install -y -qq python3-venv
        "$python" -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'aiosmtpd>=1.4,<2'
fi

# 2. A throwaway certificate authority and a server certificate it signed
#    (for localhost and 127.0.0.1). A lone self-signed certificate marked as a
#    CA is refused by rustls as a server certificate (CaUsedAsEndEntity).
fresh_cert=0
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/cert.pem" ] || [ ! -s "$dir/key.pem" ]; then
    command -v openssl >/dev/null 2>&1 || {
        sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get install -y -qq openssl
    }
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" -subj "/CN=rollback test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/server.csr" \
        -subj "/CN=localhost" >/dev/null 2>&1
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
        -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/cert.pem" >/dev/null 2>&1
    fresh_cert=1
fi

# 3. The server program (a changed program restarts the server).
cat >"$dir/server.py.new" <<'PY'
"""aiosmtpd listeners for rollback's tests; see scripts/testenv/smtp.sh."""
import json, os, signal, ssl, sys, time, uuid
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

mailbox, cert, key, user, password, plain, starttls, implicit, ready = sys.argv[1:10]

class Store:
    def __init__(self, listener):
        self.listener = listener

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                "listener": self.listener,
                "authenticated": bool(session.authenticated)}
        for ext, data in ((".eml", envelope.original_content or envelope.content),
                          (".json", json.dumps(meta).encode())):
            tmp = os.path.join(mailbox, "." + name + ext)
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(mailbox, name + ext))
        return "250 Message accepted for delivery"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login.decode() == user and auth_data.password.decode() == password)
    # handled=False: aiosmtpd answers 535 itself (the default, handled=True,
    # means "already answered" and would leave the client waiting).
    return AuthResult(success=ok, handled=False)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)

controllers = [
    Controller(Store("plain"), hostname="127.0.0.1", port=int(plain)),
    Controller(Store("starttls"), hostname="127.0.0.1", port=int(starttls),
               tls_context=ctx, require_starttls=True, authenticator=authenticator,
               auth_required=True, auth_require_tls=True),
    Controller(Store("implicit_tls"), hostname="127.0.0.1", port=int(implicit),
               ssl_context=ctx, server_hostname="localhost"),
]
for c in controllers:
    c.start()
with open(ready, "w") as f:
    f.write(str(os.getpid()))
try:
    signal.pause()
finally:
    for c in controllers:
        c.stop()
PY
restart=$fresh_cert
if ! cmp -s "$dir/server.py.new" "$dir/server.py"; then
    mv "$dir/server.py.new" "$dir/server.py"
    restart=1
else
    rm -f "$dir/server.py.new"
fi

alive() {
    [ -s "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null && [ -s "$dir/ports" ]
}

if [ "$restart" = 1 ] && alive; then
    # The running server holds an old certificate or program: restart it.
    kill "$(cat "$dir/server.pid")" 2>/dev/null || true
    rm -f "$dir/server.pid" "$dir/ports"
fi

if ! alive; then
    read -r plain starttls implicit < <("$python" - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
    user="rollback"
    password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    rm -f "$dir/ready"
    setsid nohup "$venv/bin/python" "$dir/server.py" "$mailbox" "$dir/cert.pem" "$dir/key.pem" \
        "$user" "$password" "$plain" "$starttls" "$implicit" "$dir/ready" \
        >"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
    # Controller.start() returns once its listener accepts; the server writes
    # `ready` after all three did.
    for _ in $(seq 1 150); do
        [ -s "$dir/ready" ] && break
        kill -0 "$(cat "$dir/server.pid")" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
        sleep 0.1
    done
    [ -s "$dir/ready" ] || { echo "smtp.sh: server did not start; see $dir/server.log" >&2; exit 1; }
    echo "$plain $starttls $implicit $user $password" >"$dir/ports"
fi

read -r plain starttls implicit user password <"$dir/ports"
cat >"$env_file" <<EOF
export SMTP_HOST=127.0.0.1
export SMTP_PORT=$plain
export SMTP_STARTTLS_PORT=$starttls
export SMTP_TLS_PORT=$implicit
export SMTP_USER=$user
export SMTP_PASSWORD=$password
export SMTP_CA_FILE=$dir/ca.pem
export SMTP_MAILBOX_DIR=$mailbox
EOF
echo "smtp.sh: aiosmtpd on 127.0.0.1 (plain $plain, starttls $starttls, tls $implicit); mailbox $mailbox"
