#!/usr/bin/env bash
# keel-loadgen vs memcslap (libmemcached-tools) against memcached 1.6, same workload.
#
# memcached runs with one worker thread pinned to SERVER_CORE; each client runs pinned to
# CLIENT_CORE. Every scenario gets a fresh memcached. memcslap's workload is fixed by its source:
# random keys of ~20-30 bytes, values of random length up to ~5 KB (measured here with
# `lru_crawler metadump`: item sizes 134..5102 bytes, mean 2600), one blocking connection per
# thread with one request in flight, `-e N` requests per thread. keel-loadgen is configured to
# match: --key-size 28 --value-size uniform:50-5000 --pipeline 1, one connection per memcslap
# thread, all on one client core.
#
# The last scenario asks whether one keel-loadgen core saturates one memcached core: it drives
# memcached with 16 connections x 16 in flight and reports both processes' CPU use.
#
# Shared CI-class VMs are noisy: each scenario runs REPS times, alternating the two tools, and the
# table shows the median throughput of each (latency columns: keel-loadgen's median-throughput run).
#
# Usage: loadgen/bench-vs-memcslap.sh   (env: SERVER_CORE=0 CLIENT_CORE=1 PORT=21999 N=50000 REPS=3)
set -euo pipefail

SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
PORT=${PORT:-21999}
N=${N:-50000}
REPS=${REPS:-3}
SAT_DURATION=${SAT_DURATION:-5s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LG="$TARGET_DIR/release/keel-loadgen"
WORK=$(mktemp -d /tmp/keel-bench.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)
MC_PID=""

for tool in memcached memcslap taskset; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install memcached libmemcached-tools util-linux)" >&2; exit 1; }
done
(cd "$ROOT" && cargo build --release -q -p keel-loadgen)

stop_memcached() {
    if [ -n "$MC_PID" ]; then
        kill "$MC_PID" 2>/dev/null || true
        wait "$MC_PID" 2>/dev/null || true
        MC_PID=""
    fi
}
trap 'stop_memcached; rm -rf "$WORK"' EXIT

start_memcached() {
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u root)
    taskset -c "$SERVER_CORE" memcached -l 127.0.0.1 -p "$PORT" -U 0 -t 1 -m 2048 "${user[@]}" &
    MC_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "memcached did not start on port $PORT" >&2
    exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# memcslap TEST CONCURRENCY -> requests/s of its measured phase
run_memcslap() {
    local test=$1 c=$2 out secs
    out=$(taskset -c "$CLIENT_CORE" memcslap -s "127.0.0.1:$PORT" -t "$test" -c "$c" -e "$N" -N 2>&1)
    secs=$(echo "$out" | awk -v t="$test" '$0 ~ "Time to " t " .* keys by" {print $(NF-1)}')
    awk -v n="$N" -v c="$c" -v s="$secs" 'BEGIN {printf "%.0f", n * c / s}'
}

# keel-loadgen NAME MIX CONNECTIONS PIPELINE [extra args...] -> writes $WORK/NAME/summary.json
run_loadgen() {
    local name=$1 mix=$2 conns=$3 pipe=$4
    shift 4
    taskset -c "$CLIENT_CORE" "$LG" run --server "127.0.0.1:$PORT" --out "$WORK/$name" \
        --threads 1 --connections "$conns" --pipeline "$pipe" --mix "$mix" \
        --key-size 28 --value-size uniform:50-5000 "$@" >"$WORK/$name.log" 2>&1 \
        || { cat "$WORK/$name.log" >&2; exit 1; }
}

field() { # FILE DOTTED.PATH: one value from a summary.json
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split('.'): v=v[k]
print(v)" "$1" "$2"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

row() { # NAME "MEMCSLAP_RPS..." LOADGEN_RUN_NAMES...
    local name=$1 ms lg s best=""
    ms=$(echo "$2" | median)
    shift 2
    local lgs=""
    for r in "$@"; do lgs="$lgs $(field "$WORK/$r/summary.json" throughput_rps)"; done
    lg=$(echo "$lgs" | median)
    for r in "$@"; do
        [ "$(field "$WORK/$r/summary.json" throughput_rps)" = "$lg" ] && best=$r
    done
    s="$WORK/$best/summary.json"
    printf "| %-26s | %-24s | %9.0f | %-24s | %9.0f | %6.3f | %7.1f | %7.1f | %8.1f | %6.0f |\n" "$name" \
        "$MS_RUNS" "$ms" "$(for x in $lgs; do printf '%.0f ' "$x"; done)" "$lg" \
        "$(awk -v a="$ms" -v b="$lg" 'BEGIN {print b / a}')" \
        "$(field "$s" commands.all.latency.p50_us)" "$(field "$s" commands.all.latency.p99_us)" \
        "$(field "$s" commands.all.latency.p999_us)" "$(field "$s" cpu.ns_per_request)"
}

echo "memcached $(memcached -V | awk '{print $2}') pinned to core $SERVER_CORE (-t 1); clients pinned to core $CLIENT_CORE;" \
    "N=$N requests per connection; $REPS runs per tool, alternating"
echo
echo "| scenario                   | memcslap runs (req/s)    | memcslap  | keel-loadgen runs (req/s) | loadgen   | ratio  | p50 us  | p99 us  | p99.9 us | ns/req |"
echo "|----------------------------|--------------------------|----------:|--------------------------|----------:|-------:|--------:|--------:|---------:|-------:|"

for c in 1 4; do
    for test in get set; do
        MS_RUNS=""
        names=()
        for rep in $(seq "$REPS"); do
            start_memcached
            MS_RUNS="$MS_RUNS$(run_memcslap "$test" "$c") "
            stop_memcached
            start_memcached
            if [ "$test" = get ]; then
                run_loadgen "$test-c$c-$rep" get "$c" 1 --keys "$N" --prefill --requests $((N * c))
            else
                run_loadgen "$test-c$c-$rep" set "$c" 1 --keys "$N" --requests $((N * c))
            fi
            stop_memcached
            names+=("$test-c$c-$rep")
        done
        row "$test, $c conn x 1 in flight" "$MS_RUNS" "${names[@]}"
    done
done

# Saturation: does one loadgen core out-run one memcached core?
start_memcached
run_loadgen prefill-only get 1 1 --keys "$N" --prefill --requests 1
t0=$(cpu_ticks "$MC_PID")
s0=$(date +%s.%N)
run_loadgen saturate get=9,set=1 16 16 --keys "$N" --duration "$SAT_DURATION"
t1=$(cpu_ticks "$MC_PID")
s1=$(date +%s.%N)
stop_memcached
S="$WORK/saturate/summary.json"
rps=$(field "$S" throughput_rps)
lg_ns=$(field "$S" cpu.ns_per_request)
mc_core=$(awk -v a="$t0" -v b="$t1" -v t="$CLK_TCK" -v x="$s0" -v y="$s1" 'BEGIN {printf "%.2f", (b - a) / t / (y - x)}')
lg_core=$(awk -v r="$rps" -v n="$lg_ns" 'BEGIN {printf "%.2f", r * n / 1e9}')
echo
echo "saturation (get=9,set=1, 16 conn x 16 in flight, $SAT_DURATION): $(printf '%.0f' "$rps") req/s;" \
    "memcached used $mc_core cores, keel-loadgen $lg_core cores ($(printf '%.0f' "$lg_ns") ns/request);" \
    "p50 $(field "$S" commands.all.latency.p50_us) us, p99 $(field "$S" commands.all.latency.p99_us) us"
