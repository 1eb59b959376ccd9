#!/usr/bin/env bash
# Where does portcullis spend its time per proxied request? Starts the same
# backend and single-route portcullis as run.sh (proxy on core 0, load and
# backend on core 1), then either
#
#   benches/load/profile.sh perf       # perf record (cpu-clock) under wrk, top symbols
#   benches/load/profile.sh callgrind  # instructions per request (valgrind), top functions
#
# perf needs only software events (cpu-clock), which work in VMs without
# hardware counters. callgrind counts instructions, which do not drift with
# the machine's load: compare Ir/request before and after a change.
#
# Env: PORTCULLIS_BIN (default: target/release/portcullis, built if missing),
# DURATION (perf, seconds, default 10), REQUESTS (callgrind, default 20000),
# CONNS (default 50), TOP (rows shown, default 40), LOG_LEVEL (RUST_LOG of
# portcullis, default warn; info profiles the access log too), NGINX_TOO=1 (perf: also
# profile the nginx baseline for comparison), KEEP=1 (keep the work dir),
# ROUTE_EXTRA (TOML lines added to the route, e.g. a rate_limit and header
# rules, to measure what route options cost per request).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS="$HERE/tools.py"
MODE=${1:-perf}
DURATION=${DURATION:-10}
REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-50}
TOP=${TOP:-40}
LOG_LEVEL=${LOG_LEVEL:-warn}
[ "$DURATION" -le 15 ] || DURATION=15

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || {
    log "installing $2"; apt-get install -y "$2" >&2 || { apt-get update >&2 && apt-get install -y "$2" >&2; }; }; }
need wrk wrk
need h2load nghttp2-client
need nginx nginx
case "$MODE" in
    perf) need perf linux-perf ;;
    callgrind) need valgrind valgrind ;;
    *) echo "usage: $0 perf|callgrind" >&2; exit 2 ;;
esac
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis}
if [ ! -x "$BIN" ]; then (cd "$ROOT" && cargo build --release --bin portcullis >&2); fi

W=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-profile.XXXXXX")
declare -a PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fill() {
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}

read -r P_BACKEND P_PORT P_ADMIN P_NGINX <<<"$(python3 "$TOOLS" ports 4)"
BODY=$(printf '0123456789%.0s' {1..10})
mkdir -p "$W/backend-tmp" "$W/nginx-tmp" "$W/portcullis-state"
fill "$HERE/nginx-backend.conf.in" "$W/backend.conf" DIR="$W" NAME=backend WORKERS=1 PORT="$P_BACKEND" BODY="$BODY"
taskset -c 1 "$NGINX" -p "$W" -e "$W/backend.error.log" -c "$W/backend.conf" &
PIDS+=($!)
fill "$HERE/portcullis.toml.in" "$W/portcullis.toml" DIR="$W" NAME=portcullis WORKERS=1 PORT="$P_PORT" \
    ADMIN_PORT="$P_ADMIN" BACKEND_PORT="$P_BACKEND" LISTEN_KEY=http SERVER_EXTRA="" ROUTE_EXTRA="${ROUTE_EXTRA:-}"

if [ "$MODE" = callgrind ]; then
    # Instrumentation (and so collection) is on only around the measured requests.
    RUST_LOG=$LOG_LEVEL taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$W/callgrind.out" "$BIN" run --config "$W/portcullis.toml" \
        >/dev/null 2>"$W/valgrind.log" &
else
    RUST_LOG=$LOG_LEVEL taskset -c 0 "$BIN" run --config "$W/portcullis.toml" >/dev/null 2>"$W/portcullis.log" &
fi
PORTCULLIS=$!
PIDS+=($PORTCULLIS)
python3 "$TOOLS" wait "$P_BACKEND" bench.local 15
python3 "$TOOLS" wait "$P_PORT" bench.local 60

if [ "$MODE" = perf ]; then
    profile_perf() { # NAME PID PORT
        local name=$1 pid=$2 port=$3
        taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H 'Host: bench.local' "http://127.0.0.1:$port/" >/dev/null
        taskset -c 1 wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" -H 'Host: bench.local' \
            "http://127.0.0.1:$port/" >"$W/wrk-$name.txt" &
        local wrk_pid=$!
        PIDS+=($wrk_pid)
        sleep 1
        perf record -e cpu-clock -F 2999 -g -o "$W/perf-$name.data" -p "$pid" -- sleep "$DURATION" 2>"$W/perf-$name.log" >&2
        wait "$wrk_pid" || true
        echo "## $name: $(grep 'Requests/sec' "$W/wrk-$name.txt")"
        echo
        echo "### user vs kernel samples"
        perf report -i "$W/perf-$name.data" --no-children --sort dso --stdio 2>/dev/null |
            grep -E '^\s+[0-9]' | head -12 || true
        echo
        echo "### top $TOP symbols (self, % of all samples; [k] kernel, [.] user)"
        perf report -i "$W/perf-$name.data" --no-children --sort symbol --stdio 2>/dev/null |
            grep -E '^\s+[0-9]+\.[0-9]+%' | sed 's/  \+-  \+- *$//; s/ *$//' | head -"$TOP" || true
        echo
        echo "### top $TOP user-space symbols (self, % of all samples)"
        perf report -i "$W/perf-$name.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
            grep -E '^\s+[0-9]+\.[0-9]+%' | grep -v kernel.kallsyms | sed 's/  \+-  \+- *$//; s/ *$//' | head -"$TOP" || true
        echo
    }
    profile_perf portcullis "$PORTCULLIS" "$P_PORT"
    if [ "${NGINX_TOO:-0}" = 1 ]; then
        fill "$HERE/nginx-proxy.conf.in" "$W/nginx.conf" DIR="$W" NAME=nginx WORKERS=1 PORT="$P_NGINX" \
            BACKEND_PORT="$P_BACKEND" ACCESS_LOG=off LISTEN_OPTS="" CERT=/dev/null KEY=/dev/null
        sed -i '/ssl_certificate/d' "$W/nginx.conf"
        taskset -c 0 "$NGINX" -p "$W" -e "$W/nginx.error.log" -c "$W/nginx.conf" &
        NGINX_PID=$!
        PIDS+=($NGINX_PID)
        python3 "$TOOLS" wait "$P_NGINX" bench.local 15
        profile_perf nginx "$(pgrep -P "$NGINX_PID" | head -1)" "$P_NGINX"
    fi
else
    # Warm up (connections, pools, lazy statics) outside the measurement.
    taskset -c 1 h2load --h1 -n 2000 -c "$CONNS" "http://127.0.0.1:$P_PORT/" >/dev/null
    callgrind_control -i on "$PORTCULLIS" >/dev/null
    taskset -c 1 h2load --h1 -n "$REQUESTS" -c "$CONNS" \
        "http://127.0.0.1:$P_PORT/" >"$W/h2load.txt"
    callgrind_control -i off "$PORTCULLIS" >/dev/null
    callgrind_control -d "$PORTCULLIS" >/dev/null
    sleep 2
    OUTFILE=$(ls -S "$W"/callgrind.out* | head -1) # the dump, not an empty part

    cp "$OUTFILE" "${TMPDIR:-/tmp}/portcullis-callgrind.out"
    DONE=$(grep -oE '[0-9]+ succeeded' "$W/h2load.txt" | awk '{print $1}')
    [ "${DONE:-0}" -gt 0 ] || { cat "$W/h2load.txt" >&2; exit 1; }
    callgrind_annotate "$OUTFILE" >"$W/self.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=yes "$OUTFILE" >"$W/incl.txt" 2>/dev/null || true
    TOTAL=$(grep 'PROGRAM TOTALS' "$W/self.txt" | head -1 | tr -d ',' | grep -oE '[0-9]+' | head -1)
    echo "## callgrind: $DONE requests, $TOTAL instructions, $((TOTAL / DONE)) instructions (Ir) per request"
    echo
    # Rows look like "1,234,567 (12.3%)  file:function [binary]"; print Ir per request first.
    per_request() {
        tr -d ',' | awk -v n="$DONE" '/^ *[0-9]+ \(/ {ir = $1; $1 = ""; printf "%8.0f Ir/req %s\n", ir / n, $0}' |
            sed -E 's|/[^ ]*/registry/src/[^/]*/||; s|/rustc/[0-9a-f]*/library/||; s| \[[^]]*\]$||'
    }
    echo "### top $TOP functions, inclusive"
    per_request <"$W/incl.txt" | head -"$TOP" || true
    echo
    echo "### top $TOP functions, self"
    per_request <"$W/self.txt" | head -"$TOP" || true
    log "callgrind output copied to ${TMPDIR:-/tmp}/portcullis-callgrind.out (callgrind_annotate / kcachegrind)"
fi
