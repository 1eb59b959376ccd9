#!/usr/bin/env bash
# Side-by-side load harness: portcullis vs nginx on the same pinned core(s),
# interleaved rounds, one Markdown table. See benches/load/README.md.
#
#   benches/load/run.sh [--threads 1|2] [--rounds N] [--duration SECS]
#                       [--no-build] [--out FILE] [SCENARIO...]
#
# With no SCENARIO: the main table (HTTP/1.1, TLS, h2, memory, reload, auth).
# SCENARIO: bulk | websocket | https-upstream | compression | auth-redis
# | extras (all five): the extra scenarios of scenarios.sh, one table.
#
# Env: ROUNDS (default 3; use 7 for the published table), DURATION (seconds
# per wrk run, default 10, at most 15), THREADS (default 1), PORTCULLIS_BIN
# (skip the build and use this binary; PORTCULLIS_LABEL names it in the
# table), PROXY_CPUS / LOAD_CPUS (taskset
# lists), RELOAD_DURATION (default 15), IDLE_CONNS (default 1000), KEEP=1
# (keep the work directory with configs and raw wrk output).
#
# Everything binds 127.0.0.1 on free ports; every process started here is
# stopped by its pid when the script exits (trap EXIT); every run is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS="$HERE/tools.py"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
RELOAD_DURATION=${RELOAD_DURATION:-15}
IDLE_CONNS=${IDLE_CONNS:-1000}
BUILD=1
OUT=${OUT:-}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
EXTRAS=()

while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --threads=*) THREADS=${1#*=}; shift ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        extras) EXTRAS+=(bulk websocket https-upstream compression auth-redis); shift ;;
        bulk|websocket|https-upstream|compression|auth-redis) EXTRAS+=("$1"); shift ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
DURATION=${DURATION%s}
RELOAD_DURATION=${RELOAD_DURATION%s}
for v in ROUNDS DURATION THREADS RELOAD_DURATION IDLE_CONNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "$v must be a positive integer" >&2; exit 2; }
done
[ "$DURATION" -le 15 ] || { echo "DURATION is capped at 15 s per run" >&2; DURATION=15; }
[ "$RELOAD_DURATION" -le 15 ] || RELOAD_DURATION=15

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------
# Tools: find them or install them (Debian packages).

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
APT_UPDATED=0
install_pkgs() {
    log "installing: $*"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2; then
        if [ $APT_UPDATED = 0 ]; then
            $SUDO apt-get update >&2
            APT_UPDATED=1
        fi
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2
    fi
}
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || install_pkgs "$2"
}
need wrk wrk
need h2load nghttp2-client
need nginx nginx
need taskset util-linux
need python3 python3
need curl curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# The byte-relay ceiling needs nginx's stream module (Debian ships it apart).
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$STREAM_MODULE" ] || install_pkgs libnginx-mod-stream || true

# ---------------------------------------------------------------------------
# Cores: the proxy under test gets PROXY_CPUS, the load generator and the
# backend share LOAD_CPUS. On this 2-core machine, --threads 1 is "proxy on
# core 0, wrk + backend on core 1"; --threads 2 gives the proxy both cores,
# so it then competes with wrk and the backend on core 1.

NPROC=$(nproc)
cpu_list() { # first count -> "a,b,..."
    local first=$1 count=$2 out="" i
    for ((i = first; i < first + count; i++)); do out+="${out:+,}$i"; done
    echo "$out"
}
if [ -z "${PROXY_CPUS:-}" ]; then
    if [ "$THREADS" -le "$NPROC" ]; then PROXY_CPUS=$(cpu_list 0 "$THREADS"); else PROXY_CPUS=$(cpu_list 0 "$NPROC"); fi
fi
if [ -z "${LOAD_CPUS:-}" ]; then
    if [ "$NPROC" -gt "$THREADS" ]; then LOAD_CPUS=$(cpu_list "$THREADS" $((NPROC - THREADS))); else LOAD_CPUS=$((NPROC - 1)); fi
fi
LOAD_N=$(tr ',' '\n' <<<"$LOAD_CPUS" | wc -l)

# ---------------------------------------------------------------------------
# Work directory and process bookkeeping.

W=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-load.XXXXXX")
TSV="$W/results.tsv"
: >"$TSV"
declare -a PIDS=()
declare -A PID_OF=()

cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_bg() { # start_bg NAME ENV... -- CMD...: starts in the background, remembers its pid
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" "$@" >"$W/$name.stdout" 2>"$W/$name.stderr" &
    PIDS+=($!)
    PID_OF[$name]=$!
}

stop_pid() { # stops one pid we started, by pid
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

result() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"; } # scenario metric proxy round value
row() { printf 'row\t%s\n' "$*" >>"$TSV"; }
note() { printf 'note\t%s\n' "$*" >>"$TSV"; }

fill() { # fill TEMPLATE OUT KEY=VALUE...
    local tpl=$1 out=$2; shift 2
    local args=() kv
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tpl" >"$out"
}

# ---------------------------------------------------------------------------
# Build and ports.

if [ -n "${PORTCULLIS_BIN:-}" ]; then
    BIN=$PORTCULLIS_BIN
else
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"
    if [ $BUILD = 1 ]; then
        log "building portcullis (cargo build --release)"
        (cd "$ROOT" && cargo build --release --bin portcullis >&2)
    fi
fi
[ -x "$BIN" ] || { echo "no portcullis binary at $BIN (build it, or set PORTCULLIS_BIN)" >&2; exit 1; }

# More file descriptors: 1,000 idle connections plus the load.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

read -r P_BACKEND P_NGINX P_NGINX_LOG P_NGINX_TLS P_PORT P_PORT_ADMIN P_PORT_LOG P_PORT_LOG_ADMIN \
    P_PORT_TLS P_PORT_TLS_ADMIN P_RELOAD P_RELOAD_ADMIN P_RSS P_RSS_ADMIN P_AUTH P_AUTH_ADMIN P_RELAY \
    <<<"$(python3 "$TOOLS" ports 17)"

BODY=$(printf '0123456789%.0s' {1..10}) # exactly 100 bytes

# One ECDSA P-256 certificate for "localhost", served by both proxies.
need openssl openssl
CERT="$W/cert.pem"
KEY="$W/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$KEY" -out "$CERT" 2>/dev/null
cat >"$W/tls-extra.toml" <<EOF_TLS

[[certificate]]
hosts = ["localhost"]
cert_file = "$CERT"
key_file = "$KEY"
EOF_TLS

# ---------------------------------------------------------------------------
# Processes.

start_nginx() { # NAME TEMPLATE CPUS WORKERS KEY=VALUE...
    local name=$1 tpl=$2 cpus=$3 workers=$4; shift 4
    mkdir -p "$W/$name-tmp"
    fill "$HERE/$tpl" "$W/$name.conf" DIR="$W" NAME="$name" WORKERS="$workers" CERT="$CERT" KEY="$KEY" "$@"
    "$NGINX" -t -q -p "$W" -e "$W/$name.error.log" -c "$W/$name.conf" \
        || { cat "$W/$name.error.log" >&2; exit 1; }
    start_bg "$name" -- taskset -c "$cpus" "$NGINX" -p "$W" -e "$W/$name.error.log" -c "$W/$name.conf"
}

start_portcullis() { # NAME PORT ADMIN_PORT RUST_LOG http|https [EXTRA_CONFIG_FILE]
    local name=$1 port=$2 admin=$3 level=$4 listen=$5 extra=${6:-} server_extra=""
    mkdir -p "$W/$name-state"
    [ "$listen" = https ] && server_extra="hsts = false"
    fill "$HERE/portcullis.toml.in" "$W/$name.toml" DIR="$W" NAME="$name" WORKERS="$THREADS" \
        PORT="$port" ADMIN_PORT="$admin" BACKEND_PORT="$P_BACKEND" LISTEN_KEY="$listen" \
        SERVER_EXTRA="$server_extra" ROUTE_EXTRA="${ROUTE_EXTRA:-}"
    if [ "$listen" = https ]; then cat "$W/tls-extra.toml" >>"$W/$name.toml"; fi
    if [ -n "$extra" ]; then cat "$extra" >>"$W/$name.toml"; fi
    "$BIN" check --config "$W/$name.toml" >&2
    # Access logs (info) go to stdout; the log scenario sends them to /dev/null.
    RUST_LOG=$level taskset -c "$PROXY_CPUS" "$BIN" --log-format json run --config "$W/$name.toml" \
        >/dev/null 2>"$W/$name.stderr" &
    PIDS+=($!)
    PID_OF[$name]=$!
}

stop_named() { # stops a proxy started above, by its pid, and forgets it
    local name=$1 pid=${PID_OF[$1]} i
    stop_pid "$pid"
    for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" = "$pid" ] && unset 'PIDS[i]'; done
    unset 'PID_OF[$name]'
}

# The proxy's processes: nginx's master and workers, or portcullis.
proc_pids() {
    local pid=${PID_OF[$1]}
    echo "$pid"
    pgrep -P "$pid" 2>/dev/null || true
}
cpu_ticks() { # "UTIME+STIME STIME" summed over every process of NAME, in clock ticks
    local total=0 sys=0 pid t s
    for pid in $(proc_pids "$1"); do
        read -r t s < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13, $13}') || true
        total=$((total + ${t:-0}))
        sys=$((sys + ${s:-0}))
    done
    echo "$total $sys"
}
rss_kib() { # summed VmRSS of every process of NAME
    local total=0 pid v
    for pid in $(proc_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || v=0
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

cores_jiffies() { # CPUS ("0,1") -> "BUSY TOTAL" jiffies summed over those cores (/proc/stat)
    local list=",$1," line
    awk -v list="$list" '$1 ~ /^cpu[0-9]+$/ {
            id = substr($1, 4)
            if (index(list, "," id ",") == 0) next
            busy += $2 + $3 + $4 + $7 + $8 + $9; total += $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
        } END { print busy + 0, total + 0 }' /proc/stat
}

wait_ready() { # PORT NAME [tls]
    local ok=0
    if [ "${3:-}" = tls ]; then
        for _ in $(seq 150); do
            curl -skf -o /dev/null "https://localhost:$1/" && { ok=1; break; }
            sleep 0.1
        done
    else
        python3 "$TOOLS" wait "$1" bench.local 15 && ok=1
    fi
    if [ $ok = 0 ]; then
        log "$2 did not come up on port $1; its stderr:"
        cat "$W/$2.stderr" "$W/$2.error.log" 2>/dev/null | tail -20 >&2
        exit 1
    fi
}

# ---------------------------------------------------------------------------
# One wrk run against a proxy, with its CPU time.

# run_load PROXY_NAME TOOL URL CONNS SECS OUTFILE [wrk/h2load args...]: one
# bounded run; prints "key=value" lines (rps, requests, p50_us, p99_us,
# non2xx, socket_errors, cpu_ticks, sys_ticks: the kernel's part of cpu_ticks).
run_load() {
    local name=$1 tool=$2 url=$3 conns=$4 secs=$5 out=$6
    shift 6
    local before before_sys after after_sys pb0 pt0 pb1 pt1 lb0 lt0 lb1 lt1
    read -r before before_sys < <(cpu_ticks "$name")
    read -r pb0 pt0 < <(cores_jiffies "$PROXY_CPUS")
    read -r lb0 lt0 < <(cores_jiffies "$LOAD_CPUS")
    if [ "$tool" = h2load ]; then
        timeout $((secs + 20)) taskset -c "$LOAD_CPUS" h2load -t"$LOAD_N" -c"$conns" -D "$secs" "$@" "$url" \
            >"$out" 2>&1 || true
    else
        timeout $((secs + 20)) taskset -c "$LOAD_CPUS" wrk -t"$LOAD_N" -c"$conns" -d"${secs}s" --latency "$@" "$url" \
            >"$out" 2>&1 || true
    fi
    read -r after after_sys < <(cpu_ticks "$name")
    read -r pb1 pt1 < <(cores_jiffies "$PROXY_CPUS")
    read -r lb1 lt1 < <(cores_jiffies "$LOAD_CPUS")
    python3 "$TOOLS" "$tool" "$out"
    echo "cpu_ticks=$((after - before))"
    echo "sys_ticks=$((after_sys - before_sys))"
    # How busy the proxy's cores and the load's (wrk + backend) cores were:
    # when both are near 100 %, req/s is capped by the machine, not the proxy.
    echo "proxy_cores_busy=$(( (pb1 - pb0) * 100 / ((pt1 - pt0) > 0 ? (pt1 - pt0) : 1) ))"
    echo "load_cores_busy=$(( (lb1 - lb0) * 100 / ((lt1 - lt0) > 0 ? (lt1 - lt0) : 1) ))"
}

# scenario SCENARIO ROUND PROXY_LABEL PROXY_NAME TOOL URL CONNS [args...]
scenario() {
    local scen=$1 round=$2 label=$3 name=$4 tool=$5 url=$6 conns=$7
    shift 7
    local out="$W/$tool-$scen-$label-$round.txt" rps requests p50_us p99_us non2xx socket_errors cpu_ticks sys_ticks
    local proxy_cores_busy load_cores_busy
    eval "$(run_load "$name" "$tool" "$url" "$conns" "$DURATION" "$out" "$@")"
    local cpu_us=nan sys_us=nan
    if [ "$requests" -gt 0 ]; then
        cpu_us=$(awk -v t="$cpu_ticks" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
        sys_us=$(awk -v t="$sys_ticks" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    fi
    result "$scen" rps "$label" "$round" "$rps"
    [ "$p50_us" = nan ] || result "$scen" p50_us "$label" "$round" "$p50_us"
    [ "$p99_us" = nan ] || result "$scen" p99_us "$label" "$round" "$p99_us"
    result "$scen" cpu_us "$label" "$round" "$cpu_us"
    result "$scen" sys_us "$label" "$round" "$sys_us"
    result "$scen" proxy_busy "$label" "$round" "$proxy_cores_busy"
    result "$scen" load_busy "$label" "$round" "$load_cores_busy"
    result "$scen" errors "$label" "$round" $((non2xx + socket_errors))
    log "  $scen round $round $label: $rps req/s, p50 ${p50_us}µs, p99 ${p99_us}µs, CPU ${cpu_us}µs/req (kernel ${sys_us}), cores busy: proxy ${proxy_cores_busy}% load ${load_cores_busy}%, errors $((non2xx + socket_errors))"
}

# scenario_rss SCENARIO ROUND nginx|portcullis plain|tls: a fresh proxy
# process, one request, idle RSS, then IDLE_CONNS idle keep-alive
# connections and the RSS they add. Fresh, because memory freed after the
# load rounds would otherwise be reused and hide the per-connection cost.
scenario_rss() {
    local scen=$1 round=$2 label=$3 kind=$4
    local name="rss_$label" ready="$W/idle-$scen-$label-$round.ready" base after pid
    if [ "$label" = nginx ]; then
        local opts=""
        [ "$kind" = tls ] && opts="ssl http2"
        start_nginx "$name" nginx-proxy.conf.in "$PROXY_CPUS" "$THREADS" PORT="$P_RSS" \
            BACKEND_PORT="$P_BACKEND" ACCESS_LOG=off LISTEN_OPTS="$opts"
    else
        local listen=http
        [ "$kind" = tls ] && listen=https
        start_portcullis "$name" "$P_RSS" "$P_RSS_ADMIN" warn "$listen" 2>/dev/null
    fi
    wait_ready "$P_RSS" "$name" "$kind"
    sleep 1
    base=$(rss_kib "$name")
    python3 "$TOOLS" idle "$P_RSS" "$IDLE_CONNS" "$ready" 30 "$kind" >"$W/idle.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 300); do [ -s "$ready" ] || ! kill -0 "$pid" 2>/dev/null && break; sleep 0.1; done
    if [ ! -s "$ready" ]; then
        log "  idle connections to $label ($kind) failed: $(cat "$W/idle.out")"
        stop_pid "$pid"
        stop_named "$name"
        return
    fi
    sleep 1 # let the proxy settle
    after=$(rss_kib "$name")
    stop_pid "$pid"
    stop_named "$name"
    local per1000
    per1000=$(awk -v a="$after" -v b="$base" -v n="$IDLE_CONNS" 'BEGIN {printf "%.0f", (a - b) * 1000 / n}')
    result "$scen" idle_kib "$label" "$round" "$base"
    result "$scen" per1000_kib "$label" "$round" "$per1000"
    result "$scen" per_conn_kib "$label" "$round" "$(awk -v x="$per1000" 'BEGIN {printf "%.2f", x / 1000}')"
    log "  $scen round $round $label: idle ${base} KiB, +${per1000} KiB per 1,000 idle conns"
}

# scenario_reload ROUND: 100 reloads of a 10,000-route config during a wrk run.
scenario_reload() {
    local round=$1
    local out="$W/wrk-reload-$round.txt" res="$W/reload-$round.res"
    local rps requests p50_us p99_us non2xx socket_errors cpu_ticks sys_ticks ok failed secs err reload_pid
    local proxy_cores_busy load_cores_busy
    # The reloads start one second into the wrk run.
    ( sleep 1; exec python3 "$TOOLS" reload "$P_RELOAD_ADMIN" 100 "$res" \
        "$W/portcullis_reload.toml" "$W/portcullis_reload.alt.toml" ) &
    reload_pid=$!
    PIDS+=("$reload_pid")
    eval "$(run_load portcullis_reload wrk "http://127.0.0.1:$P_RELOAD/" 50 "$RELOAD_DURATION" "$out" \
        -H "Host: app-17.example.com")"
    # Bounded: 100 reloads have at most 10 s each in tools.py; normally done long before.
    for _ in $(seq 300); do kill -0 "$reload_pid" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$reload_pid"
    read -r ok failed secs err <"$res" || { ok=0; failed=100; secs=nan; err=no-result; }
    result reload rps portcullis "$round" "$rps"
    result reload non2xx portcullis "$round" "$non2xx"
    result reload socket_errors portcullis "$round" "$socket_errors"
    result reload reloads_ok portcullis "$round" "$ok"
    result reload reloads_failed portcullis "$round" "$failed"
    result reload reload_secs portcullis "$round" "$secs"
    if awk -v s="$secs" -v d="$RELOAD_DURATION" 'BEGIN {exit !(s + 1 > d)}'; then
        note "- reload round $round: the 100 reloads took ${secs}s from 1 s into the ${RELOAD_DURATION}s wrk run, so the last ones ran after the load stopped (the machine was busy; failures are still counted for the ones under load)."
    fi
    [ "$err" = "-" ] || note "- reload round $round: first reload error: ${err//_/ }"
    log "  reload round $round: $ok/100 reloads ok in ${secs}s; during them $rps req/s, non-2xx $non2xx, socket errors $socket_errors"
}

# ---------------------------------------------------------------------------
# The extra scenarios (bulk bodies, WebSocket, HTTPS upstream, compression,
# Redis sessions): their own processes and table, then exit.

if [ ${#EXTRAS[@]} -gt 0 ]; then
    # shellcheck source=benches/load/scenarios.sh
    source "$HERE/scenarios.sh"
    run_extras "${EXTRAS[@]}"
    exit 0
fi

# ---------------------------------------------------------------------------
# TODO hooks: scenarios whose feature is not in the binary under test. They
# print "not yet available" rows, never numbers. TLS ones are used only when
# the binary rejects an https config (an older build).

todo_tls() {
    local why="not yet available (this build has no https listener)"
    row "| HTTPS keep-alive, 50 conns | req/s, p99, CPU µs/req | $why | $why | | | ≥ 1.2× |"
    row "| h2 over TLS (h2load, 50 conns × 10 streams) | req/s | $why | $why | | | ≥ 1.2× |"
    row "| new TLS handshakes (ECDSA P-256) | proxy CPU per handshake | $why | $why | | | ≤ 0.7× |"
    row "| memory (TLS) | RSS per idle TLS keep-alive conn | $why | $why | | | ≤ 16 KiB |"
}
todo_auth_vs_public() { # WHY
    row "| authenticated vs public route (portcullis only) | req/s auth / public | n/a | not measured: $1 | | | ≥ 0.95× |"
}

# ---------------------------------------------------------------------------
# Start everything.

log "work directory $W; proxy cores $PROXY_CPUS, load + backend cores $LOAD_CPUS; $THREADS proxy thread(s); $ROUNDS rounds of ${DURATION}s"

start_nginx backend nginx-backend.conf.in "$LOAD_CPUS" "$LOAD_N" PORT="$P_BACKEND" BODY="$BODY"
start_nginx nginx nginx-proxy.conf.in "$PROXY_CPUS" "$THREADS" PORT="$P_NGINX" BACKEND_PORT="$P_BACKEND" \
    ACCESS_LOG=off LISTEN_OPTS=""
start_nginx nginx_log nginx-proxy.conf.in "$PROXY_CPUS" "$THREADS" PORT="$P_NGINX_LOG" BACKEND_PORT="$P_BACKEND" \
    ACCESS_LOG="/dev/null portcullis_like" LISTEN_OPTS=""
start_portcullis portcullis "$P_PORT" "$P_PORT_ADMIN" warn http
RELAY=0
if [ -f "$STREAM_MODULE" ]; then
    start_nginx relay nginx-relay.conf.in "$PROXY_CPUS" "$THREADS" PORT="$P_RELAY" BACKEND_PORT="$P_BACKEND" \
        MODULE="$STREAM_MODULE"
    RELAY=1
else
    log "no nginx stream module ($STREAM_MODULE): the byte-relay ceiling is not measured"
    note "The byte-relay ceiling was not measured: install libnginx-mod-stream."
fi
start_portcullis portcullis_log "$P_PORT_LOG" "$P_PORT_LOG_ADMIN" info http

# TLS: only if this build takes an https listener.
TLS=0
fill "$HERE/portcullis.toml.in" "$W/tls-probe.toml" DIR="$W" NAME=probe WORKERS=1 PORT="$P_PORT_TLS" \
    ADMIN_PORT="$P_PORT_TLS_ADMIN" BACKEND_PORT="$P_BACKEND" LISTEN_KEY=https SERVER_EXTRA="hsts = false" ROUTE_EXTRA=""
cat "$W/tls-extra.toml" >>"$W/tls-probe.toml"
if "$BIN" check --config "$W/tls-probe.toml" >/dev/null 2>&1; then
    TLS=1
    start_nginx nginx_tls nginx-proxy.conf.in "$PROXY_CPUS" "$THREADS" PORT="$P_NGINX_TLS" BACKEND_PORT="$P_BACKEND" \
        ACCESS_LOG=off LISTEN_OPTS="ssl http2"
    start_portcullis portcullis_tls "$P_PORT_TLS" "$P_PORT_TLS_ADMIN" warn https
else
    log "this portcullis build rejects an https config; TLS scenarios are skipped"
fi

# The reload instance: 10,000 routes (mixed exact and wildcard hosts) plus
# the catch-all; the alternate version adds one route so every reload is a
# real change.
python3 "$TOOLS" routes 10000 "$P_BACKEND" >"$W/routes-10k.toml"
start_portcullis portcullis_reload "$P_RELOAD" "$P_RELOAD_ADMIN" warn http "$W/routes-10k.toml"
cp "$W/portcullis_reload.toml" "$W/portcullis_reload.toml.orig"
{ cat "$W/portcullis_reload.toml"; printf '\n[[route]]\nhost = "extra.example.com"\nupstream = "http://127.0.0.1:%s"\n' "$P_BACKEND"; } \
    >"$W/portcullis_reload.alt.toml"

# Authenticated vs public: one portcullis instance with the same backend
# behind two hosts, one public, one behind single sign-on through the
# Authentik-shaped test provider (tests/peers/oidc, real oidc-provider). A
# real browserless login gives wrk a session cookie; the access token lives
# an hour, so no refresh happens during the runs: what is measured is the
# per-request session check plus the identity headers.
AUTH=0
AUTH_WHY=""
start_auth() {
    local peer="$ROOT/tests/peers/oidc"
    command -v node >/dev/null 2>&1 || install_pkgs nodejs npm || true
    if ! command -v node >/dev/null 2>&1; then AUTH_WHY="node is not installed"; return; fi
    if [ ! -d "$peer/node_modules/oidc-provider" ]; then
        log "npm ci in tests/peers/oidc"
        (cd "$peer" && npm ci --no-audit --no-fund >&2) || { AUTH_WHY="npm ci failed in tests/peers/oidc"; return; }
    fi
    start_bg idp PORT=0 LOG=0 EXIT_ON_STDIN_CLOSE=0 ACCESS_TOKEN_TTL=3600 ID_TOKEN_TTL=3600 \
        -- taskset -c "$LOAD_CPUS" node "$peer/provider.mjs"
    local issuer=""
    for _ in $(seq 300); do
        issuer=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["issuer"])' \
            "$W/idp.stdout" 2>/dev/null) && break
        sleep 0.1
    done
    if [ -z "$issuer" ]; then AUTH_WHY="the OIDC test provider did not start: $(tail -3 "$W/idp.stderr")"; return; fi
    printf 'portcullis-secret' >"$W/oidc-secret"
    cat >"$W/auth-extra.toml" <<EOF_AUTH

[oidc.bench]
issuer = "$issuer"
client_id = "portcullis"
client_secret_file = "$W/oidc-secret"
insecure_cookies = true

[[route]]
host = "public.bench"
upstream = "http://127.0.0.1:$P_BACKEND"

[[route]]
host = "auth.bench"
upstream = "http://127.0.0.1:$P_BACKEND"
auth = { oidc = "bench" }
identity_headers = "authentik"
EOF_AUTH
    start_portcullis portcullis_auth "$P_AUTH" "$P_AUTH_ADMIN" warn http "$W/auth-extra.toml"
    wait_ready "$P_AUTH" portcullis_auth
    # Discovery runs in the background: retry the login for a few seconds.
    for _ in $(seq 50); do
        AUTH_COOKIE=$(python3 "$TOOLS" login "$P_AUTH" auth.bench alice alice-pw 2>"$W/login.err") && break
        AUTH_COOKIE=""
        sleep 0.2
    done
    if [ -z "$AUTH_COOKIE" ]; then AUTH_WHY="login failed: $(cat "$W/login.err")"; return; fi
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: auth.bench' -H "Cookie: $AUTH_COOKIE" "http://127.0.0.1:$P_AUTH/")
    [ "$code" = 200 ] || { AUTH_WHY="the session cookie got HTTP $code"; return; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: auth.bench' "http://127.0.0.1:$P_AUTH/")
    [ "$code" = 401 ] || { AUTH_WHY="without the cookie the route answered $code, not 401"; return; }
    AUTH=1
}
wait_ready "$P_BACKEND" backend
for n in nginx:$P_NGINX nginx_log:$P_NGINX_LOG portcullis:$P_PORT portcullis_log:$P_PORT_LOG portcullis_reload:$P_RELOAD; do
    wait_ready "${n#*:}" "${n%%:*}"
done
if [ $TLS = 1 ]; then
    wait_ready "$P_NGINX_TLS" nginx_tls tls
    wait_ready "$P_PORT_TLS" portcullis_tls tls
fi
start_auth
[ $AUTH = 1 ] || log "authenticated-route scenario skipped: $AUTH_WHY"

# Sanity: every proxy returns the backend's 100 bytes. (On the TLS
# instances Host must match SNI, so no Host override there.)
SANITY=("http://127.0.0.1:$P_NGINX/" "http://127.0.0.1:$P_PORT/")
[ $TLS = 1 ] && SANITY+=("https://localhost:$P_NGINX_TLS/" "https://localhost:$P_PORT_TLS/")
for url in "${SANITY[@]}"; do
    host=()
    [[ $url == http:* ]] && host=(-H 'Host: bench.local')
    len=$(curl -sk "${host[@]}" "$url" | wc -c)
    [ "$len" = 100 ] || { log "$url returned $len bytes, not 100"; exit 1; }
done

# Warm-up: fill upstream pools, page in code, settle allocators.
log "warm-up"
for n in nginx:$P_NGINX portcullis:$P_PORT nginx_log:$P_NGINX_LOG portcullis_log:$P_PORT_LOG portcullis_reload:$P_RELOAD; do
    timeout 20 taskset -c "$LOAD_CPUS" wrk -t"$LOAD_N" -c256 -d2s -H 'Host: app-17.example.com' \
        "http://127.0.0.1:${n#*:}/" >/dev/null 2>&1 || true
done
if [ $TLS = 1 ]; then
    for p in "$P_NGINX_TLS" "$P_PORT_TLS"; do
        timeout 20 taskset -c "$LOAD_CPUS" wrk -t"$LOAD_N" -c50 -d2s "https://localhost:$p/" >/dev/null 2>&1 || true
    done
fi
DURATION_SAVED=$DURATION
DURATION=3
scenario direct 0 backend backend wrk "http://127.0.0.1:$P_BACKEND/" 50 -H "Host: bench.local" 2>/dev/null
DURATION=$DURATION_SAVED
log "backend directly: $(awk -F'\t' '$1 == "direct" && $2 == "rps" {print $5}' "$TSV") req/s"

# ---------------------------------------------------------------------------
# Interleaved rounds: nginx, portcullis, nginx, portcullis, ...

H_PLAIN=(-H "Host: bench.local")
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    for conns in 50 256; do
        scenario "h1_c$conns" "$round" nginx nginx wrk "http://127.0.0.1:$P_NGINX/" "$conns" "${H_PLAIN[@]}"
        scenario "h1_c$conns" "$round" portcullis portcullis wrk "http://127.0.0.1:$P_PORT/" "$conns" "${H_PLAIN[@]}"
        if [ $RELAY = 1 ]; then
            scenario "h1_c$conns" "$round" relay relay wrk "http://127.0.0.1:$P_RELAY/" "$conns" "${H_PLAIN[@]}"
        fi
    done
    scenario h1_c50_log "$round" nginx nginx_log wrk "http://127.0.0.1:$P_NGINX_LOG/" 50 "${H_PLAIN[@]}"
    scenario h1_c50_log "$round" portcullis portcullis_log wrk "http://127.0.0.1:$P_PORT_LOG/" 50 "${H_PLAIN[@]}"
    if [ $TLS = 1 ]; then
        # wrk sends SNI and Host "localhost" (the certificate's name).
        scenario tls_c50 "$round" nginx nginx_tls wrk "https://localhost:$P_NGINX_TLS/" 50
        scenario tls_c50 "$round" portcullis portcullis_tls wrk "https://localhost:$P_PORT_TLS/" 50
        scenario h2_tls "$round" nginx nginx_tls h2load "https://localhost:$P_NGINX_TLS/" 50 -m10
        scenario h2_tls "$round" portcullis portcullis_tls h2load "https://localhost:$P_PORT_TLS/" 50 -m10
        # Connection: close makes wrk open a new connection, with a full
        # handshake (wrk does no session resumption), for every request.
        scenario handshake "$round" nginx nginx_tls wrk "https://localhost:$P_NGINX_TLS/" 16 -H "Connection: close"
        scenario handshake "$round" portcullis portcullis_tls wrk "https://localhost:$P_PORT_TLS/" 16 -H "Connection: close"
    fi
    scenario_rss rss "$round" nginx plain
    scenario_rss rss "$round" portcullis plain
    if [ $TLS = 1 ]; then
        scenario_rss rss_tls "$round" nginx tls
        scenario_rss rss_tls "$round" portcullis tls
    fi
    if [ $AUTH = 1 ]; then
        scenario auth_route "$round" public portcullis_auth wrk "http://127.0.0.1:$P_AUTH/" 50 -H "Host: public.bench"
        scenario auth_route "$round" auth portcullis_auth wrk "http://127.0.0.1:$P_AUTH/" 50 -H "Host: auth.bench" \
            -H "Cookie: $AUTH_COOKIE"
    fi
    scenario_reload "$round"
    result after_load rss_kib nginx "$round" "$(rss_kib nginx)"
    result after_load rss_kib portcullis "$round" "$(rss_kib portcullis)"
done

[ $TLS = 1 ] || todo_tls
[ $AUTH = 1 ] || todo_auth_vs_public "$AUTH_WHY"

# ---------------------------------------------------------------------------
# The table.

if [ -n "${PORTCULLIS_BIN:-}" ]; then
    WHAT="portcullis binary $PORTCULLIS_BIN${PORTCULLIS_LABEL:+ ($PORTCULLIS_LABEL)}"
else
    COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY=$(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null | head -1)
    WHAT="portcullis ${COMMIT}${DIRTY:+ (+ uncommitted changes)}"
fi
REPORT="$W/report.md"
{
    echo "### Portcullis vs nginx, $(date -u +%Y-%m-%d), $THREADS proxy thread(s)"
    echo
    echo "$NPROC shared cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); proxy pinned to core(s) $PROXY_CPUS, wrk and the backend (nginx, fixed 100-byte body) to core(s) $LOAD_CPUS."
    echo "$ROUNDS interleaved rounds of ${DURATION}s per run (reload runs ${RELOAD_DURATION}s); medians; ratio = portcullis / nginx."
    echo "$WHAT, $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')."
    echo
    python3 "$TOOLS" report "$TSV" "$ROUNDS" "$THREADS"
} >"$REPORT"
cat "$REPORT"
if [ -n "$OUT" ]; then cp "$REPORT" "$OUT"; log "table written to $OUT"; fi
