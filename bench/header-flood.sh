#!/usr/bin/env bash
# Peak memory of poolrelay while clients send huge header sections (issue 18): each of
# SESSIONS clients sends HEADER_MB MB of tiny header lines ("X-A: b"), then a body; the relay
# must refuse each with 552 5.3.4 and stay near its resting size. Prints the replies and the
# relay's VmRSS at rest and VmHWM (peak RSS) after the flood. DKIM=1 adds an RSA-2048 key for
# the From domain (the signer must never see such a header section either).
#   bench/header-flood.sh                       40 MB, one session, release build
#   SESSIONS=3 DKIM=1 bench/header-flood.sh
#   BIN=/path/to/poolrelay BUILD=0 bench/header-flood.sh     measure another build
# Needs cargo (unless BUILD=0) and python3 (the client). Runs on loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HEADER_MB=${HEADER_MB:-40}
SESSIONS=${SESSIONS:-1}
DKIM=${DKIM:-0}
BUILD=${BUILD:-1}
BIN=${BIN:-$ROOT/target/release/poolrelay}
command -v python3 >/dev/null || { echo "header-flood.sh: needs python3" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then cargo build --release --bin poolrelay; fi

WORK=$(mktemp -d /tmp/poolrelay-header-flood.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/poolrelay.toml" <<EOF
hostname = "relay.bench"
data_dir = "data"
[[listen]]
address = "127.0.0.1:$PORT"
tls = "none"
auth = "none"
[access]
networks = ["127.0.0.0/8"]
[dns]
nameservers = ["127.0.0.1:9"]
[[route]]
domain = "*"
host = "127.0.0.1:9"
[doctor]
background = false
EOF
if [ "$DKIM" = 1 ]; then
    (cd "$WORK" && "$BIN" dkim keygen --domain example.com --selector bench --out dkim.pem >/dev/null)
    printf '[[dkim]]\ndomain = "example.com"\nselector = "bench"\nprivate_key = "dkim.pem"\n' >>"$WORK/poolrelay.toml"
fi
(cd "$WORK" && exec "$BIN" serve --config poolrelay.toml >relay.log 2>&1) &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break
    sleep 0.1
done
# The relay's process (the subshell exec'd it).
kb() { awk -v k="$1:" '$1==k {print $2}' "/proc/$PID/status"; }
REST=$(kb VmRSS)

python3 - "$PORT" "$HEADER_MB" "$SESSIONS" <<'PY'
import socket, sys, threading, time
port, mb, sessions = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line = b"X-A: b\r\n"
block = line * (64 * 1024 // len(line))
replies = []

def reply(f):
    lines = []
    while True:
        l = f.readline()
        lines.append(l.decode().rstrip())
        if len(l) < 4 or l[3:4] != b"-":
            return " / ".join(lines)

def one():
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    reply(f)
    for cmd in (b"EHLO bench.test", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.org>", b"DATA"):
        s.sendall(cmd + b"\r\n")
        reply(f)
    t = time.time()
    s.sendall(b"From: a@example.com\r\nSubject: header flood\r\n")
    sent = 0
    while sent < mb * 1000 * 1000:
        s.sendall(block)
        sent += len(block)
    s.sendall(b"\r\nbody\r\n.\r\n")
    r = reply(f)
    s.sendall(b"NOOP\r\n")
    replies.append((r, reply(f), time.time() - t))
    s.close()

threads = [threading.Thread(target=one) for _ in range(sessions)]
for t in threads: t.start()
for t in threads: t.join()
for r, noop, secs in replies:
    print(f"final reply: {r}  (after {secs:.1f} s); then NOOP: {noop}")
PY
echo "relay VmRSS at rest: $((REST / 1024)) MiB; VmHWM (peak) after $SESSIONS × $HEADER_MB MB header sections: $(( $(kb VmHWM) / 1024 )) MiB (DKIM=$DKIM)"
