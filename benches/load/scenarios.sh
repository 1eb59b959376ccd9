# The extra scenarios of run.sh (sourced by it, using its helpers: start_nginx,
# start_portcullis, start_bg, cpu_ticks, scenario, result, note...):
#
#   run.sh bulk            1 GiB down/upload, plain and TLS, Content-Length and chunked
#   run.sh websocket       WebSocket echo, 1 KiB messages, 50 connections
#   run.sh https-upstream  TLS to the backend (HTTP/1.1 keep-alive), and an h2 upstream
#   run.sh compression     10 KiB JSON gzip; rate limit + header rules vs the plain route
#   run.sh auth-redis      authenticated route with the Redis session store
#   run.sh extras          all five
#
# See benches/load/README.md ("Extra scenarios").

XTRA="$HERE/extra.py"
BULK_BYTES=${BULK_BYTES:-1073741824}
GIB=1073741824

read -r X_BULK X_WS X_JSON X_TLS_UP X_H2_UP X_NGINX X_NGINX_TLS X_PORT X_PORT_ADMIN X_PORT_TLS X_PORT_TLS_ADMIN \
    X_REDIS X_AUTH X_AUTH_ADMIN X_COLD X_COLD_ADMIN <<<"$(python3 "$TOOLS" ports 16)"

loadavg() { cut -d' ' -f1 /proc/loadavg; }

hwm_kib() { # summed VmHWM (peak RSS since the last clear_refs) of every process of NAME
    local total=0 pid v
    for pid in $(proc_pids "$1"); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || v=0
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------
# The processes: backends on the load core(s), one nginx and two portcullis
# (plain, TLS) on the proxy core(s).

start_extra_peers() {
    # The TLS backend's certificate, issued by a CA of its own (a
    # self-signed CA:TRUE certificate is not a valid server certificate
    # for webpki).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
        -keyout "$W/be-ca.key" -out "$W/be-ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -keyout "$W/be.key" -out "$W/be.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
        >"$W/be.ext"
    openssl x509 -req -in "$W/be.csr" -CA "$W/be-ca.pem" -CAkey "$W/be-ca.key" -CAcreateserial -days 2 \
        -extfile "$W/be.ext" -out "$W/be.pem" 2>/dev/null
    mkdir -p "$W/www"
    python3 - "$W/www/data.json" <<'EOF_JSON'
import json, random, sys
random.seed(7)
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
items, out = [], ""
while len(out) < 10240:
    items.append({"id": len(items), "name": " ".join(random.choice(words) for _ in range(3)),
                  "price": round(random.uniform(1, 500), 2), "tags": random.sample(words, 3),
                  "active": random.random() < 0.5, "sku": f"{random.getrandbits(40):010x}"})
    out = json.dumps({"items": items}, indent=1)
open(sys.argv[1], "w").write(out)
EOF_JSON
    # nginx workers run as an unprivileged user: let them read the file.
    chmod 711 "$W"
    chmod -R a+rX "$W/www"
    JSON_BYTES=$(wc -c <"$W/www/data.json")
    start_nginx xbackend nginx-xbackend.conf.in "$LOAD_CPUS" "$LOAD_N" JSON_PORT="$X_JSON" \
        TLS_UP_PORT="$X_TLS_UP" H2_UP_PORT="$X_H2_UP" BODY="$BODY" BE_CERT="$W/be.pem" BE_KEY="$W/be.key"
    start_nginx backend nginx-backend.conf.in "$LOAD_CPUS" "$LOAD_N" PORT="$P_BACKEND" BODY="$BODY"
    start_bg bulkbe -- taskset -c "$LOAD_CPUS" python3 "$XTRA" bulk-backend "$X_BULK"
    start_bg wsbe -- taskset -c "$LOAD_CPUS" python3 "$XTRA" ws-echo "$X_WS"
    start_nginx nginx_x nginx-extra.conf.in "$PROXY_CPUS" "$THREADS" PORT="$X_NGINX" TLS_PORT="$X_NGINX_TLS" \
        BULK_PORT="$X_BULK" WS_PORT="$X_WS" JSON_PORT="$X_JSON" TLS_UP_PORT="$X_TLS_UP" H2_UP_PORT="$X_H2_UP" \
        BE_CA="$W/be-ca.pem"
    local up_tls="upstream_tls = { ca_file = \"$W/be-ca.pem\", server_name = \"localhost\" }"
    cat >"$W/x-routes.toml" <<EOF_X

[[route]]
host = "bulk.bench"
upstream = "http://127.0.0.1:$X_BULK"

[[route]]
host = "ws.bench"
upstream = "http://127.0.0.1:$X_WS"

[[route]]
host = "json.bench"
upstream = "http://127.0.0.1:$X_JSON"
compress = true

[[route]]
host = "tlsup.bench"
upstream = "https://127.0.0.1:$X_TLS_UP"
$up_tls
upstream_protocol = "http1"

[[route]]
host = "h2up.bench"
upstream = "https://127.0.0.1:$X_H2_UP"
$up_tls
upstream_protocol = "h2"

[[route]]
host = "plain.bench"
upstream = "http://127.0.0.1:$P_BACKEND"

[[route]]
host = "rules.bench"
upstream = "http://127.0.0.1:$P_BACKEND"
rate_limit = { requests = 1000000, per = "1s", burst = 1000000, by = "ip" }
request_headers = { set = { "X-Env" = "bench" }, remove = ["X-Debug"] }
response_headers = { remove = ["X-Powered-By"] }
EOF_X
    start_portcullis portcullis_x "$X_PORT" "$X_PORT_ADMIN" warn http "$W/x-routes.toml"
    cat "$W/tls-extra.toml" >"$W/xtls-routes.toml"
    printf '\n[[route]]\nhost = "localhost"\nupstream = "http://127.0.0.1:%s"\n' "$X_BULK" >>"$W/xtls-routes.toml"
    start_portcullis portcullis_xtls "$X_PORT_TLS" "$X_PORT_TLS_ADMIN" warn https "$W/xtls-routes.toml"
    wait_ready "$P_BACKEND" backend
    wait_ready "$X_JSON" xbackend
    wait_ready "$X_BULK" bulkbe
    wait_ready "$X_WS" wsbe
    wait_ready "$X_NGINX" nginx_x
    wait_ready "$X_PORT" portcullis_x
    wait_ready "$X_NGINX_TLS" nginx_x tls
    wait_ready "$X_PORT_TLS" portcullis_xtls tls
    # Every scenario host answers 200 through both proxies before anything is measured.
    local h port code
    for h in bulk.bench ws.bench json.bench tlsup.bench h2up.bench; do
        for port in "$X_NGINX" "$X_PORT"; do
            code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $h" "http://127.0.0.1:$port/")
            [ "$code" = 200 ] || { log "$h through port $port answered $code; logs in $W (KEEP=1)"; exit 1; }
        done
    done
}

# ---------------------------------------------------------------------------
# Bulk bodies: one curl transfer of BULK_BYTES per run, proxy CPU from
# /proc/PID/stat, peak RSS from VmHWM after resetting it (clear_refs 5).

# bulk_run SCEN ROUND LABEL NAME download URL [curl args...]
# bulk_run SCEN ROUND LABEL NAME upload PORT HOST cl|chunked plain|tls
bulk_run() {
    local scen=$1 round=$2 label=$3 name=$4 way=$5 url=$6
    shift 6
    local out="$W/$scen-$label-$round.txt" body="$W/$scen-$label-$round.body" pid
    local before bsys after asys rss0 hwm code down up secs bytes err=0
    for pid in $(proc_pids "$name"); do echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true; done
    rss0=$(rss_kib "$name")
    read -r before bsys < <(cpu_ticks "$name")
    if [ "$way" = upload ]; then
        # extra.py upload: curl -T with a known length is slow here (see extra.py).
        timeout 120 taskset -c "$LOAD_CPUS" python3 "$XTRA" upload "$url" "$1" "$BULK_BYTES" "$2" "$3" >"$out" 2>&1 || true
        tail -n +2 "$out" >"$body"
        head -1 "$out" >"$out.w" && mv "$out.w" "$out"
    else
        timeout 120 taskset -c "$LOAD_CPUS" curl -sS --http1.1 -k --max-time 110 -o "$body" \
            -w '%{http_code} %{size_download} %{size_upload} %{time_total}\n' "$@" "$url" >"$out" 2>&1 || true
    fi
    read -r after asys < <(cpu_ticks "$name")
    hwm=$(hwm_kib "$name")
    read -r code down up secs < <(tail -1 "$out") || true
    if [ "$way" = upload ]; then
        bytes=${up:-0}
        [ "$(cat "$body" 2>/dev/null)" = "$BULK_BYTES" ] || err=1
    else
        bytes=${down:-0}
        [ "$bytes" = "$BULK_BYTES" ] || err=1
    fi
    [ "${code:-0}" = 200 ] || err=1
    rm -f "$body"
    result "$scen" errors "$label" "$round" "$err"
    if [ $err = 1 ]; then
        log "  $scen round $round $label: FAILED: $(tail -2 "$out" | tr '\n' ' ')"
        return
    fi
    local mbps cpu sys
    mbps=$(awk -v b="$bytes" -v s="$secs" 'BEGIN {printf "%.1f", b / s / 1e6}')
    cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v b="$bytes" -v g=$GIB 'BEGIN {printf "%.3f", t / hz / (b / g)}')
    sys=$(awk -v t=$((asys - bsys)) -v hz="$CLK_TCK" -v b="$bytes" -v g=$GIB 'BEGIN {printf "%.3f", t / hz / (b / g)}')
    result "$scen" mbps "$label" "$round" "$mbps"
    result "$scen" cpu_s_gib "$label" "$round" "$cpu"
    result "$scen" sys_s_gib "$label" "$round" "$sys"
    result "$scen" peak_rss_kib "$label" "$round" $((hwm - rss0))
    log "  $scen round $round $label: $mbps MB/s, CPU ${cpu} s/GiB (kernel $sys), peak RSS +$((hwm - rss0)) KiB"
}

round_bulk() {
    local round=$1 tls way framing scen pname nport pport host
    for tls in plain tls; do
        if [ "$tls" = plain ]; then
            pname=portcullis_x nport=$X_NGINX pport=$X_PORT host=bulk.bench
        else
            pname=portcullis_xtls nport=$X_NGINX_TLS pport=$X_PORT_TLS host=localhost
        fi
        for way in download upload; do
            for framing in cl chunked; do
                scen="bulk_${way}_${framing}_$tls"
                if [ "$way" = download ]; then
                    local scheme=http addr=127.0.0.1
                    [ "$tls" = tls ] && scheme=https addr=localhost
                    bulk_run "$scen" "$round" nginx nginx_x download \
                        "$scheme://$addr:$nport/$framing/$BULK_BYTES" -H "Host: $host"
                    bulk_run "$scen" "$round" portcullis "$pname" download \
                        "$scheme://$addr:$pport/$framing/$BULK_BYTES" -H "Host: $host"
                else
                    bulk_run "$scen" "$round" nginx nginx_x upload "$nport" "$host" "$framing" "$tls"
                    bulk_run "$scen" "$round" portcullis "$pname" upload "$pport" "$host" "$framing" "$tls"
                fi
            done
        done
    done
}

# ---------------------------------------------------------------------------
# WebSocket echo.

ws_run() { # ROUND LABEL NAME PORT
    local round=$1 label=$2 name=$3 port=$4 out="$W/ws-$2-$1.txt"
    local before bsys after asys pb0 pt0 pb1 pt1 lb0 lt0 lb1 lt1 messages=0 seconds msgs_per_s errors=1
    read -r before bsys < <(cpu_ticks "$name")
    read -r pb0 pt0 < <(cores_jiffies "$PROXY_CPUS")
    read -r lb0 lt0 < <(cores_jiffies "$LOAD_CPUS")
    timeout $((DURATION + 40)) taskset -c "$LOAD_CPUS" python3 "$XTRA" ws-client "$port" ws.bench 50 "$DURATION" 1024 \
        >"$out" 2>&1 || true
    read -r after asys < <(cpu_ticks "$name")
    read -r pb1 pt1 < <(cores_jiffies "$PROXY_CPUS")
    read -r lb1 lt1 < <(cores_jiffies "$LOAD_CPUS")
    eval "$(grep -E '^(messages|seconds|msgs_per_s|errors)=' "$out")"
    result ws errors "$label" "$round" "$errors"
    if [ "${messages:-0}" -gt 0 ]; then
        local cpu
        cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$messages" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
        result ws mps "$label" "$round" "$msgs_per_s"
        result ws cpu_us "$label" "$round" "$cpu"
        result ws proxy_busy "$label" "$round" $(((pb1 - pb0) * 100 / ((pt1 - pt0) > 0 ? (pt1 - pt0) : 1)))
        result ws load_busy "$label" "$round" $(((lb1 - lb0) * 100 / ((lt1 - lt0) > 0 ? (lt1 - lt0) : 1)))
        log "  ws round $round $label: $msgs_per_s msg/s, CPU ${cpu} µs/msg, errors $errors"
    else
        log "  ws round $round $label: FAILED: $(tail -3 "$out" | tr '\n' ' ')"
    fi
}

round_ws() {
    ws_run "$1" nginx nginx_x "$X_NGINX"
    ws_run "$1" portcullis portcullis_x "$X_PORT"
}

# ---------------------------------------------------------------------------
# HTTPS upstream, and the h2 upstream's connection count.

h2_conns_since() { # LINE: distinct connection numbers logged by the h2 backend after line LINE
    tail -n +"$(($1 + 1))" "$W/h2up-access.log" 2>/dev/null | sort -u | wc -l
}

round_https_upstream() {
    local round=$1 label name port mark
    for label in nginx portcullis; do
        if [ "$label" = nginx ]; then name=nginx_x port=$X_NGINX; else name=portcullis_x port=$X_PORT; fi
        scenario https_up "$round" "$label" "$name" wrk "http://127.0.0.1:$port/" 50 -H "Host: tlsup.bench"
    done
    for label in nginx portcullis; do
        if [ "$label" = nginx ]; then name=nginx_x port=$X_NGINX; else name=portcullis_x port=$X_PORT; fi
        # The h2 listener closes connections idle for 3 s: after 4 s the
        # proxy has none open, and a 1 s burst of 50 concurrent requests
        # shows how many it opens from cold; the measured run after it
        # shows the steady state.
        sleep 4
        mark=$(wc -l <"$W/h2up-access.log" 2>/dev/null || echo 0)
        timeout 20 taskset -c "$LOAD_CPUS" wrk -t"$LOAD_N" -c50 -d1s -H "Host: h2up.bench" "http://127.0.0.1:$port/" \
            >/dev/null 2>&1 || true
        result h2_up backend_conns_cold "$label" "$round" "$(h2_conns_since "$mark")"
        log "  h2_up round $round $label: $(h2_conns_since "$mark") backend connection(s) opened by a cold burst"
        mark=$(wc -l <"$W/h2up-access.log" 2>/dev/null || echo 0)
        scenario h2_up "$round" "$label" "$name" wrk "http://127.0.0.1:$port/" 50 -H "Host: h2up.bench"
        result h2_up backend_conns "$label" "$round" "$(h2_conns_since "$mark")"
        log "  h2_up round $round $label: $(h2_conns_since "$mark") backend connection(s) used in the measured run"
    done
}

# ---------------------------------------------------------------------------
# Compression; rate limit + header rules against the plain route.

round_compression() {
    local round=$1 label name port bytes
    for label in nginx portcullis; do
        if [ "$label" = nginx ]; then name=nginx_x port=$X_NGINX; else name=portcullis_x port=$X_PORT; fi
        scenario gzip "$round" "$label" "$name" wrk "http://127.0.0.1:$port/data.json" 50 \
            -H "Host: json.bench" -H "Accept-Encoding: gzip"
        bytes=$(curl -s -H 'Host: json.bench' -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/data.json" | wc -c)
        result gzip resp_bytes "$label" "$round" "$bytes"
    done
    scenario rules "$round" plain portcullis_x wrk "http://127.0.0.1:$X_PORT/" 50 -H "Host: plain.bench"
    scenario rules "$round" rules portcullis_x wrk "http://127.0.0.1:$X_PORT/" 50 -H "Host: rules.bench"
}

check_compression() {
    local label port enc
    for label in nginx portcullis; do
        if [ "$label" = nginx ]; then port=$X_NGINX; else port=$X_PORT; fi
        enc=$(curl -s -D - -o /dev/null -H 'Host: json.bench' -H 'Accept-Encoding: gzip' \
            "http://127.0.0.1:$port/data.json" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-encoding" {print $2}')
        [ "$enc" = gzip ] || { log "$label did not gzip the JSON (Content-Encoding: '${enc}')"; exit 1; }
        curl -s --compressed -H 'Host: json.bench' "http://127.0.0.1:$port/data.json" | cmp -s - "$W/www/data.json" ||
            { log "$label: the decompressed JSON differs from the file"; exit 1; }
    done
    log "both proxies gzip the ${JSON_BYTES}-byte JSON, and it decompresses to the file"
}

# ---------------------------------------------------------------------------
# Authenticated route with the Redis session store: the OIDC test provider,
# redis-server, two portcullis instances sharing it (cache_lifetime 60 s and
# 0 s: with 0 every session check is a Redis GET), one login.

AUTH_COOKIE=""
start_auth_redis() {
    local peer="$ROOT/tests/peers/oidc" issuer="" code
    need redis-server redis-server
    command -v node >/dev/null 2>&1 || install_pkgs nodejs npm
    if [ ! -d "$peer/node_modules/oidc-provider" ]; then
        (cd "$peer" && npm ci --no-audit --no-fund >&2)
    fi
    mkdir -p "$W/redis"
    start_bg redis -- taskset -c "$LOAD_CPUS" redis-server --port "$X_REDIS" --bind 127.0.0.1 --save "" \
        --appendonly no --dir "$W/redis"
    start_bg idp PORT=0 LOG=0 EXIT_ON_STDIN_CLOSE=0 ACCESS_TOKEN_TTL=3600 ID_TOKEN_TTL=3600 \
        -- taskset -c "$LOAD_CPUS" node "$peer/provider.mjs"
    for _ in $(seq 300); do
        issuer=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["issuer"])' \
            "$W/idp.stdout" 2>/dev/null) && break
        sleep 0.1
    done
    [ -n "$issuer" ] || { log "the OIDC test provider did not start: $(tail -3 "$W/idp.stderr")"; exit 1; }
    printf 'portcullis-secret' >"$W/oidc-secret"
    openssl rand -hex 32 >"$W/cluster.key"
    chmod 600 "$W/cluster.key"
    local lifetime
    for lifetime in 60s 0s; do
        cat >"$W/auth-redis-$lifetime.toml" <<EOF_AUTH

[cluster]
redis = "redis://127.0.0.1:$X_REDIS/0"
encryption_key_file = "$W/cluster.key"
instance_name = "bench-$lifetime"
cache_lifetime = "$lifetime"

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
    done
    start_portcullis portcullis_auth "$X_AUTH" "$X_AUTH_ADMIN" warn http "$W/auth-redis-60s.toml"
    start_portcullis portcullis_cold "$X_COLD" "$X_COLD_ADMIN" warn http "$W/auth-redis-0s.toml"
    wait_ready "$X_AUTH" portcullis_auth
    wait_ready "$X_COLD" portcullis_cold
    for _ in $(seq 50); do
        AUTH_COOKIE=$(python3 "$TOOLS" login "$X_AUTH" auth.bench alice alice-pw 2>"$W/login.err") && break
        AUTH_COOKIE=""
        sleep 0.2
    done
    [ -n "$AUTH_COOKIE" ] || { log "login failed: $(cat "$W/login.err")"; exit 1; }
    # The session lives in Redis: the cookie works on both instances.
    for port in "$X_AUTH" "$X_COLD"; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: auth.bench' -H "Cookie: $AUTH_COOKIE" "http://127.0.0.1:$port/")
        [ "$code" = 200 ] || { log "the session cookie got HTTP $code on port $port"; exit 1; }
        code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: auth.bench' "http://127.0.0.1:$port/")
        [ "$code" = 401 ] || { log "without the cookie port $port answered $code, not 401"; exit 1; }
    done
    log "signed in through the test provider; the session is in Redis and works on both instances"
}

redis_gets() {
    redis-cli -p "$X_REDIS" info commandstats 2>/dev/null | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_get:/ {print $3}' | head -1
}

round_auth_redis() {
    local round=$1 g0 g1 n
    scenario auth_redis "$round" public portcullis_auth wrk "http://127.0.0.1:$X_AUTH/" 50 -H "Host: public.bench"
    scenario auth_redis "$round" auth portcullis_auth wrk "http://127.0.0.1:$X_AUTH/" 50 -H "Host: auth.bench" \
        -H "Cookie: $AUTH_COOKIE"
    # One connection, so latency is the request's own, not queueing.
    scenario auth_redis_c1 "$round" warm portcullis_auth wrk "http://127.0.0.1:$X_AUTH/" 1 -H "Host: auth.bench" \
        -H "Cookie: $AUTH_COOKIE"
    g0=$(redis_gets)
    scenario auth_redis_c1 "$round" cold portcullis_cold wrk "http://127.0.0.1:$X_COLD/" 1 -H "Host: auth.bench" \
        -H "Cookie: $AUTH_COOKIE"
    g1=$(redis_gets)
    n=$(awk -F'\t' -v r="$round" '$1 == "auth_redis_c1" && $2 == "rps" && $3 == "cold" && $4 == r {print $5}' "$TSV")
    log "  auth_redis_c1 round $round cold: $((g1 - g0)) Redis GETs during the run (~${n} req/s × ${DURATION}s)"
    note "- cold-cache round $round: $((g1 - g0)) Redis GET commands during the ${DURATION}s run at ${n} req/s (one per request)."
}

# ---------------------------------------------------------------------------

run_extras() { # SCENARIO...
    local s round
    for s in "$@"; do
        case "$s" in
            bulk | websocket | https-upstream | compression | auth-redis) ;;
            *) echo "unknown scenario: $s" >&2; exit 2 ;;
        esac
    done
    log "work directory $W; proxy cores $PROXY_CPUS, load + backend cores $LOAD_CPUS; scenarios: $*; $ROUNDS rounds"
    start_extra_peers
    [[ " $* " == *" compression "* ]] && check_compression
    [[ " $* " == *" auth-redis "* ]] && start_auth_redis
    # Warm-up: pools, lazy statics, page-in.
    for port in "$X_NGINX" "$X_PORT"; do
        for h in tlsup.bench h2up.bench json.bench plain.bench; do
            timeout 20 taskset -c "$LOAD_CPUS" wrk -t"$LOAD_N" -c50 -d1s -H "Host: $h" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
        done
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        result machine loadavg all "$round" "$(loadavg)"
        log "round $round of $ROUNDS (load average $(loadavg))"
        for s in "$@"; do
            case "$s" in
                bulk) round_bulk "$round" ;;
                websocket) round_ws "$round" ;;
                https-upstream) round_https_upstream "$round" ;;
                compression) round_compression "$round" ;;
                auth-redis) round_auth_redis "$round" ;;
            esac
        done
    done
    local commit
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "${PORTCULLIS_BIN:-}" ] && commit="$PORTCULLIS_BIN${PORTCULLIS_LABEL:+ ($PORTCULLIS_LABEL)}"
    REPORT="$W/report.md"
    {
        echo "### Extra scenarios ($*), $(date -u +%Y-%m-%d), $THREADS proxy thread(s)"
        echo
        echo "$NPROC shared cores; proxy pinned to core(s) $PROXY_CPUS, clients and backends to core(s) $LOAD_CPUS."
        echo "$ROUNDS interleaved rounds (wrk and WebSocket runs ${DURATION}s; bulk: one $BULK_BYTES-byte transfer per run); medians."
        echo "portcullis $commit, $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(curl --version | head -1 | cut -d' ' -f1-2)."
        echo
        python3 "$XTRA" report "$TSV"
    } >"$REPORT"
    cat "$REPORT"
    if [ -n "$OUT" ]; then cp "$REPORT" "$OUT"; log "table written to $OUT"; fi
}
