#!/usr/bin/env bash
# poolrelay warm-up ramp benchmark (issue 24): the fixed table and the adaptive ramp on the same
# simulated receiver, in three scenarios:
#   (a) a receiver that takes more than the table   target: adaptive reaches the table's full
#                                                    volume in <= 60 % of the fixed table's days
#   (b) a receiver that takes less than the table   target: 0 blocks with adaptive (the fixed
#                                                    table gets blocked)
#   (c) the receiver tightens mid-ramp              target: the adaptive ramp steps back within
#                                                    one day and is never blocked
# Each scenario runs two real relays side by side (`poolrelay serve`, one pool IP each: the
# fixed table on 127.0.0.10, the same table with `adaptive = true` on 127.0.0.11), a load
# generator per relay that keeps demand above its cap (SMTP to the relay's listener), and the
# receiver simulator of integration-tests/common/receiver.rs on 127.0.0.20 (a model with a
# hidden allowance per source IP: throttles with 421 4.7.28 above it, blocks with 550 5.7.1 far
# above it or when a sender goes on pushing after days of refusals). Warm-up days are RAMP_DAY_MS long; the relay's state is read from its admin API.
# The driver is the `--ignored` test `ramp_bench` in integration-tests/ramp_sim.rs.
#
# Needs cargo only; talks to loopback only. About 3 minutes with the defaults.
#   bench/ramp.sh                           all three scenarios, days of 4 s
#   RAMP_ONLY=b bench/ramp.sh               one scenario (any of a, b, c)
#   RAMP_DAY_MS=6000 bench/ramp.sh          longer days (a busy machine: fewer late deliveries)
#   RAMP_TABLE=16,32,64,128 RAMP_DAYS=6 RAMP_MAX_GROWTH=2.0 bench/ramp.sh   another table
#   RAMP_TIGHTEN_DAY=3 RAMP_TIGHTEN_FACTOR=0.5 bench/ramp.sh                 scenario c's receiver
#   RAMP_PERSIST_DAYS=2 RAMP_PERSIST_SHARE=0.1 bench/ramp.sh   the receiver's escalation to a block
#   RAMP_STYLE=microsoft bench/ramp.sh      throttle with 451 4.7.650 (default gmail: 421 4.7.28)
#   RELEASE=1 bench/ramp.sh                 the release build (throughput is not measured here:
#                                           the debug build is the default, it is already built
#                                           by `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "bench/ramp.sh: missing cargo" >&2; exit 1; }
PROFILE=()
[ "${RELEASE:-0}" = 1 ] && PROFILE=(--release)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: $(env | grep '^RAMP_' | sort | tr '\n' ' ')bench/ramp.sh   ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
exec cargo test "${PROFILE[@]}" --quiet --test ramp_sim -- --ignored --exact ramp_bench --nocapture --test-threads 1
