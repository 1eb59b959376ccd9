#!/usr/bin/env python3
"""Small helpers for benches/load/run.sh (stdlib only).

  tools.py ports N                    print N free loopback TCP ports
  tools.py wait PORT HOSTHDR SECS     wait until GET / on 127.0.0.1:PORT answers 200
  tools.py idle PORT N READY HOLD [tls]
                                      open N keep-alive connections (TLS with SNI
                                      localhost), one request each, write READY,
                                      hold them HOLD seconds (bounded), exit
  tools.py reload PORT COUNT OUT [CONFIG ALT]
                                      POST /reload COUNT times to the admin port
                                      (alternating CONFIG between two versions),
                                      write "ok failed seconds first_error" to OUT
  tools.py wrk FILE                   parse one wrk --latency output -> key=value lines
  tools.py h2load FILE                parse one h2load output -> key=value lines
  tools.py routes N BACKEND           print N [[route]] tables (mixed exact/wildcard)
  tools.py login PORT HOST USER PASSWORD
                                      sign in through the gateway on 127.0.0.1:PORT
                                      (route HOST, plain HTTP, insecure cookies) and
                                      the OIDC test provider; print "name=value" of
                                      the gateway's session cookie
  tools.py report TSV ROUNDS THREADS  print the Markdown table from the results TSV
"""

import os
import re
import socket
import statistics
import sys
import time


def cmd_ports(n):
    socks, ports = [], []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def read_response(sock):
    """Reads one HTTP/1.1 response (Content-Length or chunked); returns status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(body) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in body")
            body += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in chunked body")
            body += chunk
    return status


def request(sock, host):
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUser-Agent: idle-probe\r\n\r\n"
    )
    return read_response(sock)


def cmd_wait(port, host, secs):
    deadline = time.time() + float(secs)
    last = None
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=1) as s:
                if request(s, host) == 200:
                    return 0
        except (OSError, ValueError, IndexError) as e:
            last = e
        time.sleep(0.1)
    print(f"127.0.0.1:{port} did not answer 200 within {secs}s ({last})", file=sys.stderr)
    return 1


def cmd_idle(port, n, ready, hold, tls="plain"):
    port, n, hold = int(port), int(n), float(hold)
    ctx = None
    if tls == "tls":
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if ctx is not None:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        status = request(s, "localhost" if ctx is not None else "bench.local")
        if status != 200:
            print(f"idle: got {status}", file=sys.stderr)
            return 1
        conns.append(s)
    with open(ready, "w") as f:
        f.write(f"{len(conns)}\n")
    # Bounded: the harness kills us by pid as soon as it has read RSS.
    time.sleep(hold)
    for s in conns:
        s.close()
    return 0


def cmd_reload(port, count, out, config=None, alt=None):
    """POSTs /reload COUNT times, one after another (each waits for its
    outcome). With CONFIG and ALT, the config file is swapped between the two
    versions (atomic rename) before every reload, so each one is a real change."""
    import http.client
    import shutil

    ok = failed = 0
    first_error = ""
    start = time.time()
    for i in range(int(count)):
        if config and alt:
            src = alt if i % 2 == 0 else config + ".orig"
            shutil.copyfile(src, config + ".next")
            os.replace(config + ".next", config)
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
            c.request("POST", "/reload", body=b"")
            r = c.getresponse()
            body = r.read()
            c.close()
            if 200 <= r.status < 300:
                ok += 1
            else:
                failed += 1
                first_error = first_error or f"HTTP {r.status}: {body[:200]!r}"
        except OSError as e:
            failed += 1
            first_error = first_error or str(e)
    secs = time.time() - start
    with open(out, "w") as f:
        f.write(f"{ok} {failed} {secs:.2f} {first_error.replace(' ', '_') or '-'}\n")
    return 0


UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * UNITS_US[m.group(2)] if m else float("nan")


def cmd_wrk(path):
    text = open(path).read()
    out = {"rps": "nan", "requests": "0", "p50_us": "nan", "p99_us": "nan",
           "non2xx": "0", "socket_errors": "0"}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if m:
        out["rps"] = m.group(1)
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = m.group(1)
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", text, re.M)
        if m:
            out[key] = f"{to_us(m.group(1)):.1f}"
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = m.group(1)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = str(sum(int(x) for x in m.groups()))
    for k, v in out.items():
        print(f"{k}={v}")


def cmd_h2load(path):
    text = open(path).read()
    out = {"rps": "nan", "requests": "0", "p50_us": "nan", "p99_us": "nan",
           "non2xx": "0", "socket_errors": "0"}
    m = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", text)
    if m:
        out["rps"] = m.group(1)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
        out["requests"] = str(ok)
        out["socket_errors"] = str(errored + timeout)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["non2xx"] = str(sum(int(x) for x in m.groups()[1:]))
    for k, v in out.items():
        print(f"{k}={v}")


def cmd_routes(n, backend):
    """n routes: 3 of 4 hosts exact, every 4th a wildcard; 5 paths per host."""
    paths = ["/", "/api", "/api/v1", "/static", "/assets"]
    n = int(n)
    hosts = (n + len(paths) - 1) // len(paths)
    made = 0
    out = []
    for i in range(hosts):
        host = f"*.tenant-{i}.example.net" if i % 4 == 3 else f"app-{i}.example.com"
        for p in paths:
            if made == n:
                break
            out.append(
                f'[[route]]\nhost = "{host}"\npath = "{p}"\nupstream = "http://127.0.0.1:{backend}"\n'
            )
            made += 1
    print("\n".join(out))


# ----------------------------------------------------------------------------
# The report.

# scenario -> (title, [(metric, label, goal text, goal check on median ratio or None)])
GOALS = {
    ("h1_c50", "rps"): ("≥ 1.1× (1 core)", lambda r: r >= 1.1),
    ("h1_c256", "rps"): ("≥ 1.1× (1 core)", lambda r: r >= 1.1),
    ("h1_c50", "cpu_us"): ("≤ 0.8×", lambda r: r <= 0.8),
    ("h1_c256", "cpu_us"): ("≤ 0.8×", lambda r: r <= 0.8),
    ("h1_c50", "p99_us"): ("≤ 1.0×", lambda r: r <= 1.0),
    ("h1_c256", "p99_us"): ("≤ 1.0×", lambda r: r <= 1.0),
    ("tls_c50", "rps"): ("≥ 1.2×", lambda r: r >= 1.2),
    ("tls_c50", "p99_us"): ("≤ 1.0×", lambda r: r <= 1.0),
    ("h2_tls", "rps"): ("≥ 1.2×", lambda r: r >= 1.2),
    ("handshake", "cpu_us"): ("≤ 0.7×", lambda r: r <= 0.7),
}

WRK_METRICS = [
    ("rps", "req/s"), ("p50_us", "p50 latency (µs)"), ("p99_us", "p99 latency (µs)"),
    ("cpu_us", "proxy CPU µs / request"), ("sys_us", "… of which kernel (system) µs / request"),
    ("proxy_busy", "proxy core(s) busy (%)"), ("load_busy", "load core(s) busy: wrk + backend (%)"),
    ("errors", "non-2xx + socket errors (sum)")]

ROWS = [
    ("h1_c50", "HTTP/1.1 keep-alive, 50 conns", WRK_METRICS),
    ("h1_c256", "HTTP/1.1 keep-alive, 256 conns", WRK_METRICS),
    ("h1_c50_log", "HTTP/1.1 keep-alive, 50 conns, access log ON (to /dev/null)", [
        ("rps", "req/s"), ("p99_us", "p99 latency (µs)"), ("cpu_us", "proxy CPU µs / request"),
        ("errors", "non-2xx + socket errors (sum)")]),
    ("tls_c50", "HTTPS keep-alive (HTTP/1.1, TLS 1.3), 50 conns", WRK_METRICS),
    ("h2_tls", "h2 over TLS (h2load, 50 conns × 10 streams)", [
        ("rps", "req/s"), ("cpu_us", "proxy CPU µs / request"),
        ("errors", "non-2xx + failed streams (sum)")]),
    ("handshake", "new TLS handshakes (ECDSA P-256, TLS 1.3, one request per connection), 16 conns", [
        ("rps", "handshakes/s"), ("cpu_us", "proxy CPU µs / handshake (incl. its request)"),
        ("errors", "non-2xx + socket errors (sum)")]),
    ("rss", "memory, plain HTTP (fresh process per round)", [
        ("idle_kib", "RSS idle after start + 1 request (KiB)"),
        ("per1000_kib", "RSS per 1,000 idle keep-alive conns (KiB)"),
        ("per_conn_kib", "RSS per idle keep-alive conn (KiB)")]),
    ("rss_tls", "memory, TLS (fresh process per round)", [
        ("idle_kib", "RSS idle after start + 1 request (KiB)"),
        ("per1000_kib", "RSS per 1,000 idle TLS keep-alive conns (KiB)"),
        ("per_conn_kib", "RSS per idle TLS keep-alive conn (KiB)")]),
    ("after_load", "memory after the load rounds", [
        ("rss_kib", "RSS of the plain instance, idle again (KiB)")]),
]

ABS_GOALS = {
    ("rss", "per_conn_kib"): ("≤ 4 KiB (absolute)", 4.0),
    ("rss_tls", "per_conn_kib"): ("≤ 16 KiB (absolute)", 16.0),
}


def cmd_login(port, host, user, password):
    """A browserless login: follows redirects between the gateway (reached on
    127.0.0.1:PORT with the route's Host) and the provider, posts the
    provider's login form, keeps cookies per host (paths ignored: one login
    never sets two cookies of one name)."""
    import http.client
    import urllib.parse

    port = int(port)
    jar = {}  # host -> {name: value}

    def send(method, url, body=None):
        u = urllib.parse.urlsplit(url)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        if u.hostname == gateway_host:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
        headers = {"Host": u.netloc, "Accept": "text/html", "User-Agent": "bench-login"}
        cookies = jar.get(u.hostname, {})
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        for k, v in resp.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                value = rest.split(";", 1)[0]
                if "max-age=0" in v.lower().replace(" ", ""):
                    jar.setdefault(u.hostname, {}).pop(name.strip(), None)
                else:
                    jar.setdefault(u.hostname, {})[name.strip()] = value
        conn.close()
        return resp.status, resp.getheader("Location"), data

    gateway_host = host
    url = f"http://{host}/"
    method, body = "GET", None
    for _ in range(20):
        status, location, page = send(method, url, body)
        method, body = "GET", None
        if status in (301, 302, 303, 307, 308) and location:
            url = urllib.parse.urljoin(url, location)
            continue
        if status == 200 and 'name="password"' in page:
            action = re.search(r'<form[^>]*action="([^"]+)"', page)
            if not action:
                break
            url = urllib.parse.urljoin(url, action.group(1))
            method = "POST"
            body = urllib.parse.urlencode({"login": user, "password": password})
            continue
        if status == 200 and urllib.parse.urlsplit(url).netloc.split(":")[0] == host:
            for name, value in jar.get(host, {}).items():
                if name in ("portcullis_session", "__Host-portcullis"):
                    print(f"{name}={value}")
                    return 0
        break
    print(f"login through {host} failed at {method} {url}: last status {status}", file=sys.stderr)
    return 1


def fmt(v):
    if v != v:  # nan
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cmd_report(tsv, rounds, threads):
    data = {}  # (scenario, metric, proxy) -> {round: value}
    notes, rows = [], []
    for line in open(tsv):
        parts = line.rstrip("\n").split("\t")
        if parts[0] == "note":
            notes.append(parts[1])
            continue
        if parts[0] == "row":
            rows.append(parts[1])
            continue
        scen, metric, proxy, rnd, val = parts
        data.setdefault((scen, metric, proxy), {})[int(rnd)] = float(val)

    def series(s, m, p):
        return data.get((s, m, p), {})

    def median(d):
        vals = [v for v in d.values() if v == v]
        return statistics.median(vals) if vals else float("nan")

    print(f"| scenario | metric | nginx (median) | portcullis (median) | portcullis/nginx per round | median of ratios | goal |")
    print("|---|---|---:|---:|---|---:|---|")
    for scen, title, metrics in ROWS:
        for metric, label in metrics:
            n = series(scen, metric, "nginx")
            p = series(scen, metric, "portcullis")
            if not n and not p:
                continue
            if metric == "errors":
                nv, pv = sum(n.values()), sum(p.values())
                print(f"| {title} | {label} | {nv:.0f} | {pv:.0f} | | | 0 |")
                continue
            ratios = []
            for r in sorted(set(n) & set(p)):
                if n[r] and n[r] == n[r] and p[r] == p[r]:
                    ratios.append(p[r] / n[r])
            per_round = " ".join(f"{x:.2f}" for x in ratios) or "—"
            mr = statistics.median(ratios) if ratios else float("nan")
            goal = ""
            if (scen, metric) in GOALS:
                text, check = GOALS[(scen, metric)]
                goal = text
                if check and ratios:
                    goal += " ✅" if check(mr) else " ❌"
            if (scen, metric) in ABS_GOALS:
                text, limit = ABS_GOALS[(scen, metric)]
                pm = median(p)
                goal = text + (" ✅" if pm == pm and pm <= limit else " ❌")
            mr_text = f"{mr:.2f}×" if ratios else "—"
            print(f"| {title} | {label} | {fmt(median(n))} | {fmt(median(p))} | {per_round} | {mr_text} | {goal} |")

    # The ceiling: a byte relay that reads no HTTP (nginx's stream module),
    # on the same core(s). Portcullis against it, and it against nginx.
    for scen in ("h1_c50", "h1_c256"):
        title = next(t for s_, t, _ in ROWS if s_ == scen)
        for metric, label in (("rps", "req/s"), ("cpu_us", "CPU µs / request")):
            relay, n, p = (series(scen, metric, who) for who in ("relay", "nginx", "portcullis"))
            rp = [p[r] / relay[r] for r in sorted(set(p) & set(relay)) if relay[r]]
            rn = [relay[r] / n[r] for r in sorted(set(n) & set(relay)) if n[r]]
            if rp:
                print(f"| {title}: byte relay, no HTTP (nginx stream; the ceiling) | {label} | "
                      f"{fmt(median(n))} (nginx) | {fmt(median(relay))} (relay) | "
                      f"relay/nginx {' '.join(f'{x:.2f}' for x in rn)}; portcullis/relay {' '.join(f'{x:.2f}' for x in rp)} | "
                      f"{statistics.median(rp):.2f}× of the relay (relay {statistics.median(rn):.2f}× nginx) | — |")

    # The kernel's share: what the network stack costs per request (the
    # same four TCP segments for either proxy) bounds how low CPU per
    # request can go in user space.
    for scen in ("h1_c50", "h1_c256", "tls_c50"):
        ncpu, psys = series(scen, "cpu_us", "nginx"), series(scen, "sys_us", "portcullis")
        rs = [psys[r] / ncpu[r] for r in sorted(set(ncpu) & set(psys)) if ncpu[r] and psys[r] == psys[r]]
        if rs:
            title = next(t for s_, t, _ in ROWS if s_ == scen)
            print(f"| {title} | portcullis kernel µs / nginx total CPU µs (the floor for CPU/request) | | | "
                  f"{' '.join(f'{x:.2f}' for x in rs)} | {statistics.median(rs):.2f}× | — |")

    # Access log on vs off, portcullis and nginx each against themselves.
    for proxy in ("nginx", "portcullis"):
        on = series("h1_c50_log", "rps", proxy)
        off = series("h1_c50", "rps", proxy)
        rs = [on[r] / off[r] for r in sorted(set(on) & set(off)) if off[r]]
        if rs:
            print(f"| access log ON vs OFF ({proxy}), 50 conns | req/s log on / log off | | | "
                  f"{' '.join(f'{x:.2f}' for x in rs)} | {statistics.median(rs):.2f}× | — |")
        con = series("h1_c50_log", "cpu_us", proxy)
        coff = series("h1_c50", "cpu_us", proxy)
        rs = [con[r] / coff[r] for r in sorted(set(con) & set(coff)) if coff[r]]
        if rs:
            print(f"| access log ON vs OFF ({proxy}), 50 conns | CPU µs/req log on / log off | | | "
                  f"{' '.join(f'{x:.2f}' for x in rs)} | {statistics.median(rs):.2f}× | — |")

    # Reload under load: portcullis only.
    rl = {m: series("reload", m, "portcullis") for m in
          ("rps", "reloads_ok", "reloads_failed", "non2xx", "socket_errors", "reload_secs")}
    if rl["rps"]:
        fails = sum(rl["non2xx"].values()) + sum(rl["socket_errors"].values())
        print(f"| reload under load: 10,000 routes, 100 × POST /reload during wrk (50 conns) | "
              f"failed requests (non-2xx + socket errors), all rounds | n/a (no equivalent) | {fails:.0f} | | | "
              f"0 {'✅' if fails == 0 else '❌'} |")
        print(f"| reload under load | reloads answered 2xx per round (of 100) | | "
              f"{' '.join(f'{v:.0f}' for _, v in sorted(rl['reloads_ok'].items()))} | | | 100 |")
        print(f"| reload under load | seconds for 100 reloads (median) | | {fmt(median(rl['reload_secs']))} | | | |")
        print(f"| reload under load | req/s during reloads (median) | | {fmt(median(rl['rps']))} | | | |")

    # Authenticated vs public route: portcullis against itself.
    pub, auth = series("auth_route", "rps", "public"), series("auth_route", "rps", "auth")
    rs = [auth[r] / pub[r] for r in sorted(set(pub) & set(auth)) if pub[r]]
    if rs:
        mr = statistics.median(rs)
        print(f"| authenticated vs public route (portcullis only, 50 conns, session cookie) | req/s auth / public | "
              f"{fmt(median(pub))} (public) | {fmt(median(auth))} (auth) | {' '.join(f'{x:.2f}' for x in rs)} | "
              f"{mr:.2f}× | ≥ 0.95× {'✅' if mr >= 0.95 else '❌'} |")
        cpub, cauth = series("auth_route", "cpu_us", "public"), series("auth_route", "cpu_us", "auth")
        rs = [cauth[r] / cpub[r] for r in sorted(set(cpub) & set(cauth)) if cpub[r]]
        if rs:
            print(f"| authenticated vs public route | CPU µs/req auth / public | {fmt(median(cpub))} | "
                  f"{fmt(median(cauth))} | {' '.join(f'{x:.2f}' for x in rs)} | {statistics.median(rs):.2f}× | — |")
        errs = sum(series("auth_route", "errors", "auth").values())
        if errs:
            print(f"| authenticated vs public route | non-2xx + socket errors on the authenticated route | | {errs:.0f} | | | 0 ❌ |")

    direct = series("direct", "rps", "backend")
    if direct:
        print(f"| backend hit directly (no proxy), 50 conns | req/s | | | | | {fmt(median(direct))} (context) |")

    for r in rows:
        print(r)
    if notes:
        print()
    for n in notes:
        print(n)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "ports": cmd_ports, "wait": cmd_wait, "idle": cmd_idle, "reload": cmd_reload,
        "wrk": cmd_wrk, "h2load": cmd_h2load, "routes": cmd_routes, "report": cmd_report,
        "login": cmd_login,
    }.get(cmd)
    if fn is None:
        print(__doc__)
        return 2
    return fn(*args) or 0


if __name__ == "__main__":
    sys.exit(main())
