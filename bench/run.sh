#!/usr/bin/env bash
# poolrelay benchmark (issue 7). One run, same machine, same load, interleaved:
#   (a) smtp-source -> smtp-sink                              the ceiling of the loop
#   (b) smtp-source -> stock Postfix relay (fsync) -> smtp-sink
#   (c) smtp-source -> poolrelay (RSA-2048 DKIM, fsync) -> smtp-sink
#   (d) smtp-source -> poolrelay (Ed25519 DKIM, fsync) -> smtp-sink
#   (e) the same as (d) with `[cluster] redis` (issue 19): a private redis-server on loopback
#       holds the shared counters; not in the default ONLY (`ONLY=de` compares the two)
# then, on poolrelay: RSS with 1,000 idle sessions, RSS while one 50 MB message arrives, and
# accept latency (final dot -> 250) at half of the peak accept rate measured in (c).
#
# Needs Debian's postfix package (smtp-source, smtp-sink, a private Postfix instance), root (the
# private Postfix and smtp-sink's -u), cargo. Installs nothing: it says what is missing.
#   bench/run.sh                      N=5000 messages of SIZE=5120 bytes over S=20 sessions
#   N=20000 S=50 ROUNDS=3 bench/run.sh    ROUNDS repeats a..d interleaved; medians are printed
#   ONLY=abcd EXTRA=0 bench/run.sh    choose the throughput cases; skip RSS/latency with EXTRA=0
#   BUILD=0 bench/run.sh              use the existing target/release/poolrelay
#   BIN=/path/to/poolrelay BUILD=0 bench/run.sh    measure another build (before/after)
#   POOL="127.0.0.10 127.0.0.11"      poolrelay sends from this pool (default; "" = no pool)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-5000}
S=${S:-20}
SIZE=${SIZE:-5120}
ROUNDS=${ROUNDS:-1}
ONLY=${ONLY:-abcd}
EXTRA=${EXTRA:-1}
IDLE=${IDLE:-1000}
BIG_MB=${BIG_MB:-50}
LAT_SECS=${LAT_SECS:-10}

missing=()
for t in smtp-source smtp-sink postfix postconf; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
command -v cargo >/dev/null 2>&1 || missing+=(cargo)
case $ONLY in *e*) command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) ;; esac
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/run.sh: missing ${missing[*]}" >&2
    echo "  Debian: echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections" >&2
    echo "          DEBIAN_FRONTEND=noninteractive apt-get install -y postfix    (Rust: rustup)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: run as root (private Postfix instance, smtp-sink -u)" >&2
    exit 1
fi
if postfix status >/dev/null 2>&1; then
    echo "bench/run.sh: note: the system Postfix is running; it does not take part but shares the CPUs" >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

# Work dir on the same disk as the repository (not tmpfs: fsync must cost what it costs).
W=$ROOT/target/bench-work
rm -rf "$W"
mkdir -p "$W"
PIDS=()
PF_ETC=""
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "$PF_ETC" ] && postfix -c "$PF_ETC" stop >/dev/null 2>&1 || true
    [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
}
trap cleanup EXIT

log() { printf '=== %s\n' "$*" >&2; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)" 2>/dev/null || awk "BEGIN{print $1}"; }

if [ "${BUILD:-1}" = 1 ]; then
    log "building poolrelay (release) and bench/loadgen"
    cargo build --release --quiet
fi
(cd bench/loadgen && CARGO_TARGET_DIR=$ROOT/target/loadgen cargo build --release --quiet)
BIN=${BIN:-$ROOT/target/release/poolrelay}
POOL=${POOL-127.0.0.10 127.0.0.11}
LG=$ROOT/target/loadgen/release/poolrelay-loadgen

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() {
    local ip=$1 p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        port_busy "$ip" "$p" || { echo "$p"; return; }
    done
    echo "no free port on $ip" >&2
    exit 1
}
wait_port() {
    for _ in $(seq 400); do port_busy "$1" "$2" && return 0; sleep 0.05; done
    echo "nothing listening on $1:$2" >&2
    return 1
}

SINK_IP=127.0.0.30
SINK_PORT=$(free_port $SINK_IP)
SINK_PID=""
start_sink() {
    stop_sink
    : >"$W/sink.out"
    smtp-sink -u nobody -c "$SINK_IP:$SINK_PORT" 1000 >"$W/sink.out" 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_port $SINK_IP "$SINK_PORT"
}
stop_sink() {
    if [ -n "$SINK_PID" ]; then
        kill "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
        SINK_PID=""
    fi
}
sink_count() { tr '\r' '\n' <"$W/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 | grep . || echo 0; }

# ---- Postfix: a private instance relaying everything to the sink -------------------------
PF_PORT=$(free_port 127.0.0.1)
start_postfix() {
    local r=$W/postfix
    rm -rf "$r"
    mkdir -p "$r/etc" "$r/queue" "$r/data"
    chown postfix "$r/data"
    cp "$(ls /etc/postfix/master.cf /usr/share/postfix/master.cf.dist 2>/dev/null | head -1)" "$r/etc/master.cf"
    : >"$r/etc/main.cf"
    postconf -c "$r/etc" -e \
        "compatibility_level = 3.6" "queue_directory = $r/queue" "data_directory = $r/data" \
        "maillog_file = $r/maillog" "maillog_file_prefixes = $r" \
        "myhostname = postfix.bench.test" "mydestination =" "alias_maps =" "alias_database =" \
        "local_transport = error:no local delivery" "inet_interfaces = 127.0.0.1" \
        "inet_protocols = ipv4" "mynetworks = 127.0.0.0/8" "smtpd_peername_lookup = no" \
        "smtp_dns_support_level = disabled" "relayhost = [$SINK_IP]:$SINK_PORT" \
        "default_destination_concurrency_limit = 100"
    postconf -c "$r/etc" -F '*/*/chroot = n'
    postconf -c "$r/etc" -MX smtp/inet
    postconf -c "$r/etc" -M "127.0.0.1:$PF_PORT/inet=127.0.0.1:$PF_PORT inet n - n - - smtpd"
    PF_ETC=$r/etc
    postfix -c "$PF_ETC" start >/dev/null 2>&1
    wait_port 127.0.0.1 "$PF_PORT"
}
stop_postfix() {
    [ -n "$PF_ETC" ] && postfix -c "$PF_ETC" stop >/dev/null 2>&1 || true
    PF_ETC=""
}
postfix_queued() { find "$W/postfix/queue/incoming" "$W/postfix/queue/active" "$W/postfix/queue/deferred" "$W/postfix/queue/maildrop" -type f 2>/dev/null | wc -l; }

# ---- poolrelay ---------------------------------------------------------------------------
PR_PORT=$(free_port 127.0.0.1)
PR_PID=""
PR_DATA=""
keys() {
    mkdir -p "$W/keys"
    [ -f "$W/keys/rsa.pem" ] || "$BIN" dkim keygen --domain bench.test --selector rsa --algorithm rsa2048 --out "$W/keys/rsa.pem" >/dev/null 2>&1
    [ -f "$W/keys/ed.pem" ] || "$BIN" dkim keygen --domain bench.test --selector ed --algorithm ed25519 --out "$W/keys/ed.pem" >/dev/null 2>&1
}
REDIS_PID=""
REDIS_PORT=""
start_redis() { # the farm's Redis for case e: loopback, no persistence
    [ -n "$REDIS_PID" ] && return 0
    REDIS_PORT=$(free_port 127.0.0.1)
    mkdir -p "$W/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$W/redis" --logfile "$W/redis/redis.log" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port 127.0.0.1 "$REDIS_PORT"
}
start_poolrelay() { # $1 = rsa | ed25519, $2 = cluster (optional: [cluster] redis)
    stop_poolrelay
    local d=$W/poolrelay-$1${2:+-$2} key sel
    rm -rf "$d"
    mkdir -p "$d"
    if [ "$1" = rsa ]; then key=$W/keys/rsa.pem sel=rsa; else key=$W/keys/ed.pem sel=ed; fi
    cat >"$d/poolrelay.toml" <<EOF
hostname = "relay.bench.test"
data_dir = "$d/data"

[[listen]]
address = "127.0.0.1:$PR_PORT"
tls = "none"
auth = "none"

[access]
networks = ["127.0.0.0/8"]

[limits]
message_size = "100MB"
max_sessions = 5000

[delivery]
port = $SINK_PORT
retry = ["5s"]
concurrency_per_destination = 100

[[route]]
domain = "*"
host = "[$SINK_IP]:$SINK_PORT"

[[dkim]]
domain = "bench.test"
selector = "$sel"
private_key = "$key"
EOF
    if "$BIN" doctor --help >/dev/null 2>&1; then
        # No background DNS checks of the pool IPs and domains during the run.
        printf '\n[doctor]\nbackground = false\n' >>"$d/poolrelay.toml"
    fi
    if [ -n "$POOL" ]; then
        # Every message gets its source IP from the pool (smooth weighted round-robin).
        printf '\n[[pool]]\nname = "default"\n' >>"$d/poolrelay.toml"
        for ip in $POOL; do
            printf '[[pool.ip]]\naddress = "%s"\nhelo = "out-%s.bench.test"\n' "$ip" "$ip" >>"$d/poolrelay.toml"
        done
    fi
    if [ "${2:-}" = cluster ]; then
        start_redis
        printf '\n[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode = "bench"\n' "$REDIS_PORT" >>"$d/poolrelay.toml"
    fi
    PR_DATA=$d/data
    "$BIN" check-config "$d/poolrelay.toml" >/dev/null
    (cd "$d" && NO_COLOR=1 exec "$BIN" serve --config poolrelay.toml >"$d/relay.log" 2>&1) &
    PR_PID=$!
    PIDS+=("$PR_PID")
    wait_port 127.0.0.1 "$PR_PORT"
}
stop_poolrelay() {
    if [ -n "$PR_PID" ]; then
        kill "$PR_PID" 2>/dev/null || true
        wait "$PR_PID" 2>/dev/null || true
        PR_PID=""
    fi
}
poolrelay_queued() { "$BIN" queue --count --config "$PR_DATA/../poolrelay.toml"; }
rss_mib() { awk '/^VmRSS/{printf "%.1f", $2/1024}' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

# ---- one throughput case -----------------------------------------------------------------
# run_case NAME ADDR QUEUE_FN: sets RES="accepted_per_s delivered_per_s" (no subshell: the sink's
# pid must stay known here, or a second smtp-sink would share the port through SO_REUSEPORT)
run_case() {
    local name=$1 addr=$2 queued=$3 t0 t1 t2 n
    start_sink
    t0=$(now)
    if ! smtp-source -s "$S" -m "$N" -l "$SIZE" -M bench.client.test -f bench@bench.test \
        -t rcpt@dest.test "$addr" >"$W/source-$name.out" 2>&1; then
        echo "smtp-source into $name failed:" >&2
        cat "$W/source-$name.out" >&2
        exit 1
    fi
    t1=$(now)
    # Timed until the sink has every message; then, untimed, the queue must drain (reading
    # poolrelay's spool log to count it takes a moment that is not delivery).
    for _ in $(seq 12000); do
        n=$(sink_count)
        if [ "$n" -ge "$N" ]; then break; fi
        sleep 0.02
    done
    t2=$(now)
    n=$(sink_count)
    if [ "$n" -lt "$N" ]; then
        echo "$name: only $n of $N messages reached the sink" >&2
        exit 1
    fi
    for _ in $(seq 600); do
        [ "$($queued)" -eq 0 ] && break
        sleep 0.1
    done
    if [ "$($queued)" -ne 0 ]; then
        echo "$name: the queue did not drain after the sink had every message" >&2
        exit 1
    fi
    RES="$(calc "round($N/($t1-$t0))") $(calc "round($N/($t2-$t0))")"
}
none_queued() { echo 0; }

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

keys
declare -A ACC DEL
log "throughput: N=$N messages of $SIZE bytes over S=$S sessions, $ROUNDS round(s), cases $ONLY"
for round in $(seq "$ROUNDS"); do
    for c in $(echo "$ONLY" | fold -w1); do
        case $c in
        a) run_case direct "$SINK_IP:$SINK_PORT" none_queued ;;
        b) start_postfix; run_case postfix "127.0.0.1:$PF_PORT" postfix_queued; stop_postfix ;;
        c) start_poolrelay rsa; run_case poolrelay-rsa "127.0.0.1:$PR_PORT" poolrelay_queued; stop_poolrelay ;;
        d) start_poolrelay ed25519; run_case poolrelay-ed25519 "127.0.0.1:$PR_PORT" poolrelay_queued; stop_poolrelay ;;
        e) start_poolrelay ed25519 cluster; run_case poolrelay-ed25519-redis "127.0.0.1:$PR_PORT" poolrelay_queued; stop_poolrelay ;;
        esac
        r=$RES
        log "round $round case $c: accepted/s delivered/s = $r"
        ACC[$c]+="${r%% *} "
        DEL[$c]+="${r##* } "
    done
done
stop_sink

med() { echo "$1" | tr ' ' '\n' | grep . | median; }
declare -A NAME=([a]="smtp-source -> smtp-sink (ceiling)" [b]="stock Postfix relay, fsync" [c]="poolrelay, RSA-2048 DKIM, fsync" [d]="poolrelay, Ed25519 DKIM, fsync" [e]="poolrelay, Ed25519 DKIM, fsync, [cluster] redis")
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), $(df -T "$W" | awk 'NR==2{print $2}') disk"
echo "command: N=$N S=$S SIZE=$SIZE ROUNDS=$ROUNDS bench/run.sh   ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| case | accepted msg/s | delivered end to end msg/s |"
echo "|---|---|---|"
for c in $(echo "$ONLY" | fold -w1); do
    echo "| ${NAME[$c]} | $(med "${ACC[$c]}") | $(med "${DEL[$c]}") |"
done
ratio() { [ -n "${DEL[$1]:-}" ] && [ -n "${DEL[$2]:-}" ] && calc "round($(med "${DEL[$1]}")/$(med "${DEL[$2]}"),2)" || echo "-"; }
echo
echo "ratios (delivered end to end): poolrelay RSA / Postfix = $(ratio c b)x (target >= 4); poolrelay Ed25519 / direct = $(ratio d a) (target >= 0.40); poolrelay RSA / direct = $(ratio c a)"
case $ONLY in *e*) echo "with [cluster] redis / without (Ed25519) = $(ratio e d) (target >= 0.90)" ;; esac

[ "$EXTRA" = 1 ] || exit 0

# ---- memory and latency on poolrelay (RSA config) ----------------------------------------
start_sink
start_poolrelay rsa
sleep 0.5
base=$(rss_mib "$PR_PID")
"$LG" idle "127.0.0.1:$PR_PORT" "$IDLE" 4 >"$W/idle.out" &
lgp=$!
PIDS+=("$lgp")
for _ in $(seq 600); do grep -q 'sessions open' "$W/idle.out" && break; sleep 0.05; done
sleep 1
idle_rss=$(rss_mib "$PR_PID")
wait "$lgp" || true
idle_hwm=$(hwm_mib "$PR_PID")
echo
echo "idle sessions: $(head -1 "$W/idle.out" | sed 's/idle: //'); $(tail -1 "$W/idle.out" | sed 's/idle: //')"
echo "RSS: $base MiB at rest, $idle_rss MiB with $IDLE idle sessions, peak (VmHWM) $idle_hwm MiB (target < 150)"
stop_poolrelay

start_poolrelay rsa
sleep 0.5
base=$(rss_mib "$PR_PID")
"$LG" big "127.0.0.1:$PR_PORT" "$BIG_MB" >"$W/big.out" &
lgp=$!
PIDS+=("$lgp")
peak=$base
while kill -0 "$lgp" 2>/dev/null; do
    r=$(rss_mib "$PR_PID")
    peak=$(calc "max($peak, $r)")
    sleep 0.05
done
wait "$lgp" || true
for _ in $(seq 400); do [ "$(poolrelay_queued)" -eq 0 ] && break; sleep 0.05; done
echo "one ${BIG_MB} MB message: $(sed 's/big: //' "$W/big.out"); RSS $base MiB before, peak $peak MiB while receiving, VmHWM $(hwm_mib "$PR_PID") MiB including delivery"
stop_poolrelay

if [ -n "${ACC[c]:-}" ]; then
    rate=$(calc "max(1, round($(med "${ACC[c]}")/2))")
    start_poolrelay rsa
    "$LG" latency "127.0.0.1:$PR_PORT" "$rate" "$LAT_SECS" "$SIZE" >"$W/latency.out"
    echo "accept latency at half of peak ($rate msg/s, new session per message, RSA DKIM): $(sed 's/latency: //' "$W/latency.out")"
    stop_poolrelay
fi
stop_sink
