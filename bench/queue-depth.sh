#!/usr/bin/env bash
# poolrelay deep-queue benchmark (issue 14). With one destination down, N messages (SIZE
# bytes, smtp-source over S sessions) fill the queue; then, on the release build:
#   - RSS idle, with the backlog queued, and its peak (VmHWM);
#   - `poolrelay queue --summary` time at that depth;
#   - latency of one message to a second, healthy destination: with an empty queue and
#     during the backlog (median of LAT_N, send to the sink's count);
#   - kill -9, then restart: time to accepting, to the first delivery (a new message to the
#     healthy destination), to the backlog fully indexed;
#   - deferral cost at depth: DEFER_N more messages to a third destination (down too), tried
#     once (a first deferral moves a message from the log to files), then all retried at once
#     (`queue retry --domain`): deferrals/s and bytes written per deferral (/proc/PID/io
#     write_bytes less the relay's own log);
#   - the destination comes back (`queue retry --all`, answered with a count): drain rate,
#     compared with the
#     normal rate (NORMAL messages to the healthy destination with an empty queue), RSS while
#     draining;
#   - zero loss: every accepted message reached a sink, the queue is empty.
#
# Needs smtp-source and smtp-sink (Debian's postfix package), root (smtp-sink -u), cargo.
#   bench/queue-depth.sh                 N=100000 SIZE=5120 S=20
#   N=1000000 bench/queue-depth.sh       the million (the fill takes a while; ~6 GB of disk)
#   BUILD=0 BIN=/path/to/poolrelay bench/queue-depth.sh    another build (before/after)
# The work dir (target/queue-depth-work) is removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-100000}
S=${S:-20}
SIZE=${SIZE:-5120}
LAT_N=${LAT_N:-10}
NORMAL=${NORMAL:-20000}
DEFER_N=${DEFER_N:-10000}

for t in smtp-source smtp-sink cargo python3; do
    command -v "$t" >/dev/null 2>&1 || { echo "bench/queue-depth.sh: missing $t (Debian: apt-get install postfix)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench/queue-depth.sh: run as root (smtp-sink -u)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

W=$ROOT/target/queue-depth-work
rm -rf "$W"
mkdir -p "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

log() { printf '=== %s  %s\n' "$(date -u +%T)" "$*" >&2; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }

if [ "${BUILD:-1}" = 1 ]; then
    log "building poolrelay (release)"
    cargo build --release --quiet
fi
BIN=${BIN:-$ROOT/target/release/poolrelay}

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        port_busy "$1" "$p" || { echo "$p"; return; }
    done
    exit 1
}
wait_port() {
    for _ in $(seq 2000); do port_busy "$1" "$2" && return 0; sleep 0.01; done
    echo "nothing listening on $1:$2" >&2
    return 1
}

# Two sinks: "up" (the healthy destination) and "down" (the one that is out, then back).
UP_IP=127.0.0.30 DOWN_IP=127.0.0.31
UP_PORT=$(free_port $UP_IP)
DOWN_PORT=$(free_port $DOWN_IP)
declare -A SINK_PID
start_sink() { # $1 = up | down
    local ip port
    if [ "$1" = up ]; then ip=$UP_IP port=$UP_PORT; else ip=$DOWN_IP port=$DOWN_PORT; fi
    smtp-sink -u nobody -c "$ip:$port" 5000 >"$W/sink-$1.out" 2>&1 &
    SINK_PID[$1]=$!
    PIDS+=("$!")
    wait_port "$ip" "$port"
}
sink_count() { tr '\r' '\n' <"$W/sink-$1.out" 2>/dev/null | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 | grep . || echo 0; }

PORT=$(free_port 127.0.0.1)
ADMIN=$(free_port 127.0.0.1)
D=$W/relay
mkdir -p "$D"
cat >"$D/poolrelay.toml" <<EOF
hostname = "relay.bench.test"
data_dir = "$D/data"

[[listen]]
address = "127.0.0.1:$PORT"
tls = "none"
auth = "none"

[access]
networks = ["127.0.0.0/8"]

[limits]
max_sessions = 5000

[delivery]
retry = ["30m"]
concurrency_per_destination = 100

[[route]]
domain = "up.test"
host = "[$UP_IP]:$UP_PORT"

[[route]]
domain = "down.test"
host = "[$DOWN_IP]:$DOWN_PORT"

[[route]]
domain = "later.test"
host = "[$DOWN_IP]:$DOWN_PORT"

[admin]
listen = "127.0.0.1:$ADMIN"

[doctor]
background = false
EOF
"$BIN" check-config "$D/poolrelay.toml" >/dev/null
PR_PID=""
start_relay() {
    (cd "$D" && NO_COLOR=1 exec "$BIN" serve --config poolrelay.toml >>"$D/relay.log" 2>&1) &
    PR_PID=$!
    PIDS+=("$PR_PID")
}
rss_mib() { awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM/{printf "%.0f", $2/1024}' "/proc/$1/status"; }
summary() { "$BIN" queue --config "$D/poolrelay.toml" --summary --json; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin).get('$1'))"; }
send() { # $1 = messages, $2 = recipient domain, $3 = sessions
    smtp-source -s "$3" -m "$1" -l "$SIZE" -M bench.client.test -f bench@bench.test \
        -t "rcpt@$2" "127.0.0.1:$PORT" >>"$W/source.out" 2>&1
}
# Median time from sending one message to the healthy sink having it.
latency() {
    local t0 n i out=()
    for i in $(seq "$LAT_N"); do
        n=$(sink_count up)
        t0=$(now)
        send 1 up.test 1
        while [ "$(sink_count up)" -le "$n" ]; do sleep 0.002; done
        out+=("$(calc "round(($(now)-$t0)*1000)")")
    done
    printf '%s\n' "${out[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
}
wait_sink() { # $1 = sink, $2 = count
    while [ "$(sink_count "$1")" -lt "$2" ]; do sleep 0.05; done
}

start_sink up
start_relay
wait_port 127.0.0.1 "$PORT"
wait_port 127.0.0.1 "$ADMIN"
sleep 1
RSS_IDLE=$(rss_mib "$PR_PID")
LAT_EMPTY=$(latency)
log "normal rate: $NORMAL messages to the healthy destination, empty queue"
base=$(sink_count up)
t0=$(now)
send "$NORMAL" up.test "$S"
wait_sink up $((base + NORMAL))
NORMAL_RATE=$(calc "round($NORMAL/($(now)-$t0))")
log "normal: $NORMAL_RATE msg/s end to end; latency ${LAT_EMPTY} ms; RSS idle $RSS_IDLE MiB"

log "fill: $N messages to down.test (destination down)"
t0=$(now)
send "$N" down.test "$S"
FILL_S=$(calc "round($(now)-$t0,1)")
# Settled: every message attempted once (nothing active).
while :; do
    s=$(summary)
    [ "$(echo "$s" | field active)" = 0 ] && [ "$(echo "$s" | field messages)" -ge "$N" ] && break
    sleep 1
done
SETTLE_S=$(calc "round($(now)-$t0,1)")
RSS_FULL=$(rss_mib "$PR_PID")
HWM_FILL=$(hwm_mib "$PR_PID")
t0=$(now)
summary >/dev/null
SUMMARY_MS=$(calc "round(($(now)-$t0)*1000)")
LAT_DEEP=$(latency)
log "filled in $FILL_S s (settled $SETTLE_S s); RSS $RSS_FULL MiB (peak $HWM_FILL); summary $SUMMARY_MS ms; latency ${LAT_DEEP} ms"

# Deferral cost at depth: bytes the relay wrote (less its log) and time per deferral.
written() { awk '/^write_bytes/{print $2}' "/proc/$PR_PID/io"; }
log_size() { stat -c %s "$D/relay.log"; }
settled() { # $1 = messages expected
    local s
    while :; do
        s=$(summary)
        [ "$(echo "$s" | field active)" = 0 ] && [ "$(echo "$s" | field messages)" -ge "$1" ] && return
        sleep 0.5
    done
}
# Attempts logged for later.test since log offset $1.
later_attempts() { tail -c +"$(($1 + 1))" "$D/relay.log" | grep -c 'recipient=rcpt@later.test' || true; }
log "deferral cost: $DEFER_N messages to later.test (down), then all retried"
w0=$(written) l0=$(log_size) t0=$(now)
send "$DEFER_N" later.test "$S"
settled $((N + DEFER_N))
while [ "$(later_attempts "$l0")" -lt "$DEFER_N" ]; do sleep 0.5; done
FIRST_B=$(calc "round(($(written)-$w0-($(log_size)-$l0))/$DEFER_N)")
w0=$(written) l0=$(log_size) t0=$(now)
"$BIN" queue --config "$D/poolrelay.toml" retry --domain later.test >/dev/null
while [ "$(later_attempts "$l0")" -lt "$DEFER_N" ]; do sleep 0.2; done
settled $((N + DEFER_N))
DEFER_RATE=$(calc "round($DEFER_N/($(now)-$t0))")
AGAIN_B=$(calc "round(($(written)-$w0-($(log_size)-$l0))/$DEFER_N)")
log "deferral: first $FIRST_B bytes written per message (log to files); repeated $AGAIN_B bytes, $DEFER_RATE deferrals/s"

log "kill -9 at depth, restart"
kill -9 "$PR_PID"
wait "$PR_PID" 2>/dev/null || true
QUEUED=$("$BIN" queue --config "$D/poolrelay.toml" --count)
start_sink down
t0=$(now)
start_relay
wait_port 127.0.0.1 "$PORT"
T_ACCEPT=$(calc "round($(now)-$t0,2)")
base=$(sink_count up)
send 1 up.test 1
wait_sink up $((base + 1))
T_DELIVER=$(calc "round($(now)-$t0,2)")
wait_port 127.0.0.1 "$ADMIN"
while [ "$(summary | field indexing)" != False ]; do sleep 0.2; done
T_INDEXED=$(calc "round($(now)-$t0,1)")
RSS_RESTART=$(rss_mib "$PR_PID")
log "accepting after $T_ACCEPT s, first delivery $T_DELIVER s, indexed $T_INDEXED s; RSS $RSS_RESTART MiB"

log "destination back: draining $QUEUED"
t0=$(now)
# The CLI: `--all` is answered with a count, not every id.
"$BIN" queue --config "$D/poolrelay.toml" retry --all >&2
RETRY_MS=$(calc "round(($(now)-$t0)*1000)")
peak=0
while [ "$(sink_count down)" -lt "$QUEUED" ]; do
    r=$(rss_mib "$PR_PID")
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
done
DRAIN_S=$(calc "round($(now)-$t0,1)")
DRAIN_RATE=$(calc "round($QUEUED/($(now)-$t0))")
while [ "$(summary | field messages)" != 0 ]; do sleep 0.2; done
LEFT=$("$BIN" queue --config "$D/poolrelay.toml" --count)
GOT=$(sink_count down)
log "drained in $DRAIN_S s ($DRAIN_RATE msg/s); RSS peak while draining $peak MiB; left $LEFT"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(df -T "$W" | awk 'NR==2{print $2}') disk"
echo "command: N=$N S=$S SIZE=$SIZE bench/queue-depth.sh   ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| measure (N = $N, $SIZE-byte messages) | value |"
echo "|---|---|"
echo "| fill (accepted, destination down) | $FILL_S s ($(calc "round($N/$FILL_S)") msg/s); every message tried once after $SETTLE_S s |"
echo "| RSS idle / with the backlog / peak while filling | $RSS_IDLE / $RSS_FULL / $HWM_FILL MiB |"
echo "| \`queue --summary\` at depth | $SUMMARY_MS ms |"
echo "| latency to the healthy destination, empty queue / during the backlog | $LAT_EMPTY / $LAT_DEEP ms |"
echo "| kill -9 at depth, restart: accepting / first delivery / backlog indexed | $T_ACCEPT / $T_DELIVER / $T_INDEXED s |"
echo "| RSS after restart / peak while draining | $RSS_RESTART / $peak MiB |"
echo "| drain rate (destination back) vs normal rate | $DRAIN_RATE vs $NORMAL_RATE msg/s ($(calc "round(100*$DRAIN_RATE/$NORMAL_RATE)") %) |"
echo "| deferral at depth: bytes written per first / repeated deferral; repeated deferrals/s | $FIRST_B / $AGAIN_B B; $DEFER_RATE /s |"
echo "| \`queue retry --all\` (answer: a count) | $RETRY_MS ms |"
echo "| zero loss: queued at kill / delivered / left | $QUEUED / $GOT / $LEFT |"
[ "$QUEUED" -eq $((N + DEFER_N)) ] && [ "$GOT" -ge "$QUEUED" ] && [ "$LEFT" -eq 0 ] || { echo "LOSS: accepted $((N + DEFER_N)), queued $QUEUED, delivered $GOT, left $LEFT" >&2; exit 1; }
