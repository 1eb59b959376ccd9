#!/usr/bin/env python3
"""Peers, clients and the report for the extra scenarios of run.sh (stdlib only).

  extra.py bulk-backend PORT          HTTP/1.1 backend for bulk bodies (threads):
                                        GET /cl/BYTES      BYTES zeros, Content-Length
                                        GET /chunked/BYTES BYTES zeros, chunked (64 KiB chunks)
                                        PUT|POST anything  reads the body (length or
                                                           chunked), answers its size
                                        GET /              "ok"
  extra.py upload PORT HOST BYTES cl|chunked plain|tls
                                      one PUT /upload of BYTES zeros (64 KiB writes),
                                      prints "status 0 sent seconds" and the answer
  extra.py ws-echo PORT               WebSocket echo server (asyncio, RFC 6455
                                      framing by hand); GET without Upgrade -> "ok"
  extra.py ws-client PORT HOST CONNS SECS SIZE
                                      CONNS WebSocket connections through
                                      127.0.0.1:PORT (Host HOST), each sending one
                                      SIZE-byte binary message and waiting for its
                                      echo, for SECS seconds; prints key=value lines
  extra.py report TSV                 the Markdown table of the extra scenarios
"""

import asyncio
import base64
import hashlib
import os
import socket
import statistics
import struct
import sys
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"


# ----------------------------------------------------------------------------
# Bulk backend: raw sockets, one thread per connection, bodies of zeros sent
# from one preallocated buffer so the backend costs as little as Python can.

CHUNK = 64 * 1024


def read_head(rfile):
    line = rfile.readline(65536)
    if not line:
        return None
    parts = line.split(b" ")
    if len(parts) < 3:
        return None
    headers = {}
    while True:
        h = rfile.readline(65536)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return parts[0], parts[1], headers


def bulk_conn(conn):
    zeros = memoryview(bytes(1 << 20))
    frame = b"%x\r\n" % CHUNK + bytes(CHUNK) + b"\r\n"
    buf = bytearray(1 << 20)
    rfile = conn.makefile("rb", buffering=1 << 20)
    try:
        while True:
            head = read_head(rfile)
            if head is None:
                return
            method, target, headers = head
            if method == b"GET":
                path = target.decode()
                if path.startswith("/cl/"):
                    size = int(path[4:])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % size)
                    while size > 0:
                        n = min(size, len(zeros))
                        conn.sendall(zeros[:n])
                        size -= n
                elif path.startswith("/chunked/"):
                    size = int(path[9:])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    while size >= CHUNK:
                        conn.sendall(frame)
                        size -= CHUNK
                    if size:
                        conn.sendall(b"%x\r\n" % size + bytes(size) + b"\r\n")
                    conn.sendall(b"0\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                got = 0
                if b"content-length" in headers:
                    left = int(headers[b"content-length"])
                    while left > 0:
                        n = rfile.readinto(memoryview(buf)[: min(left, CHUNK)])
                        if not n:
                            return
                        got += n
                        left -= n
                elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        size = int(rfile.readline(1024).split(b";")[0].strip(), 16)
                        if size == 0:
                            while rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        left = size
                        while left > 0:
                            n = rfile.readinto(memoryview(buf)[: min(left, CHUNK)])
                            if not n:
                                return
                            left -= n
                        got += size
                        rfile.readline(16)
                body = b"%d\n" % got
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            if headers.get(b"connection", b"").lower() == b"close":
                return
    except (OSError, ValueError):
        return
    finally:
        conn.close()


def cmd_upload(port, host, size, framing, tls):
    """One upload of SIZE zeros (PUT /upload); prints curl's -w format:
    "status 0 bytes_sent seconds" and the body the backend answered.
    (curl -T with a known length moved only ~100 MB/s here, with chunked
    ~1.7 GB/s, so uploads use this client: 64 KiB writes either way.)"""
    port, size = int(port), int(size)
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=100)
    if tls == "tls":
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname="localhost")
    head = f"PUT /upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if framing == "chunked" else f"Content-Length: {size}\r\n\r\n"
    s.sendall(head.encode())
    block = bytes(CHUNK)
    chunk = b"%x\r\n" % CHUNK + block + b"\r\n" if framing == "chunked" else block
    sent, left = 0, size
    while left >= CHUNK:
        s.sendall(chunk)
        left -= CHUNK
        sent += CHUNK
    if left:
        s.sendall(b"%x\r\n" % left + bytes(left) + b"\r\n" if framing == "chunked" else bytes(left))
        sent += left
    if framing == "chunked":
        s.sendall(b"0\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(65536)
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    m = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    need = int(m[0].split(b":")[1]) if m else 0
    while len(body) < need:
        got = s.recv(65536)
        if not got:
            break
        body += got
    took = time.monotonic() - t0
    s.close()
    print(f"{status} 0 {sent} {took:.6f}")
    print(body.decode(errors="replace").strip())


def cmd_bulk_backend(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(port)))
    srv.listen(256)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=bulk_conn, args=(conn,), daemon=True).start()


# ----------------------------------------------------------------------------
# WebSocket (RFC 6455) by hand: the echo server and the client.

def unmask(payload, mask):
    n = len(payload)
    if n == 0:
        return payload
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")


def frame(opcode, payload, mask=None):
    n = len(payload)
    b0 = 0x80 | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + unmask(payload, mask)


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if mask is not None:
        payload = unmask(payload, mask)
    return b0 & 0x0F, payload


async def ws_serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip()
            if headers.get(b"upgrade", b"").lower() != b"websocket":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                continue
            accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            while True:
                op, payload = await read_frame(reader)
                if op == 8:
                    writer.write(frame(8, payload[:2]))
                    await writer.drain()
                    return
                if op == 9:
                    writer.write(frame(10, payload))
                elif op in (1, 2):
                    writer.write(frame(op, payload))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def cmd_ws_echo(port):
    async def main():
        srv = await asyncio.start_server(ws_serve, "127.0.0.1", int(port), backlog=1024)
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())


def cmd_ws_client(port, host, conns, secs, size):
    port, conns, secs, size = int(port), int(conns), float(secs), int(size)
    payload = os.urandom(size)
    # One masked frame built once (a fresh mask per frame matters against
    # cache poisoning through intermediaries, not for a benchmark).
    msg = frame(2, payload, mask=os.urandom(4))
    expect = len(frame(2, payload))
    counts, errors = [], []

    async def one(i, start, deadline):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            key = base64.b64encode(os.urandom(16))
            writer.write(b"GET /ws HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
                         + key + b"\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise ConnectionError(head.split(b"\r\n")[0].decode())
            await start.wait()
            n = 0
            while time.monotonic() < deadline[0]:
                writer.write(msg)
                got = await reader.readexactly(expect)
                if got[-size:] != payload:
                    raise ValueError("echo differs")
                n += 1
            counts.append(n)
            writer.write(frame(8, struct.pack("!H", 1000), mask=os.urandom(4)))
            await writer.drain()
            writer.close()
        except Exception as e:  # noqa: BLE001 - reported, counted
            errors.append(repr(e))

    async def main():
        start = asyncio.Event()
        deadline = [0.0]
        tasks = [asyncio.create_task(one(i, start, deadline)) for i in range(conns)]
        await asyncio.sleep(0.5)  # handshakes done outside the timed part
        t0 = time.monotonic()
        deadline[0] = t0 + secs
        start.set()
        await asyncio.wait_for(asyncio.gather(*tasks), secs + 30)
        return time.monotonic() - t0

    took = asyncio.run(main())
    total = sum(counts)
    print(f"messages={total}")
    print(f"seconds={took:.3f}")
    print(f"msgs_per_s={total / took:.1f}")
    print(f"errors={len(errors)}")
    if errors:
        print(f"ws-client: {len(errors)} connection(s) failed, first: {errors[0]}", file=sys.stderr)


# ----------------------------------------------------------------------------
# The report.

# (scenario, title, metric, metric label, baseline, measured, goal text, goal check)
ROWS = []


def pair(scen, title, metrics, base="nginx", other="portcullis", goals=None):
    for metric, label in metrics:
        g = (goals or {}).get(metric, ("", None))
        ROWS.append((scen, title, metric, label, base, other, g[0], g[1]))


BULK = [("mbps", "MB/s"), ("cpu_s_gib", "proxy CPU s / GiB"), ("sys_s_gib", "… of which kernel s / GiB"),
        ("peak_rss_kib", "proxy peak RSS during the transfer − RSS before (KiB)"), ("errors", "failed transfers (sum)")]
for tls in ("plain", "tls"):
    for way in ("download", "upload"):
        for framing in ("cl", "chunked"):
            goal = {"cpu_s_gib": ("≤ 0.8×", lambda r: r <= 0.8)} if tls == "plain" else \
                {"cpu_s_gib": ("≤ 1.1×", lambda r: r <= 1.1)}
            goal["mbps"] = ("≥ 1.0×", lambda r: r >= 1.0)
            pair(f"bulk_{way}_{framing}_{tls}",
                 f"1 GiB {way}, {'Content-Length' if framing == 'cl' else 'chunked'}, "
                 f"{'plain HTTP' if tls == 'plain' else 'TLS 1.3'}", BULK, goals=goal)
pair("ws", "WebSocket echo, 1 KiB messages, 50 conns (one in flight each)",
     [("mps", "messages/s"), ("cpu_us", "proxy CPU µs / message (both directions)"),
      ("proxy_busy", "proxy core busy (%)"), ("load_busy", "load core busy: clients + echo server (%)"),
      ("errors", "failed connections (sum)")])
WRK = [("rps", "req/s"), ("p99_us", "p99 latency (µs)"), ("cpu_us", "proxy CPU µs / request"),
       ("proxy_busy", "proxy core busy (%)"), ("load_busy", "load core busy: wrk + backend (%)"),
       ("errors", "non-2xx + socket errors (sum)")]
pair("https_up", "HTTPS upstream (TLS 1.3 to the backend, keep-alive, HTTP/1.1), 50 conns", WRK,
     goals={"rps": ("≥ 1.1×", lambda r: r >= 1.1)})
pair("h2_up", "h2 upstream (TLS, one multiplexed connection) vs nginx HTTP/1.1 keep-alive upstream, 50 conns", WRK
     + [("backend_conns_cold", "backend connections opened by a 1 s burst of 50 concurrent requests with none open"),
        ("backend_conns", "backend connections used in the measured run (distinct $connection in the backend's log)")])
pair("gzip", "10 KiB JSON gzip-compressed by the proxy (level 1), 50 conns", WRK
     + [("resp_bytes", "compressed body bytes")],
     goals={"rps": ("≥ 1.0×", lambda r: r >= 1.0)})
pair("rules", "rate limit (not triggered) + 2 request / 1 response header rules vs the plain route (portcullis only), 50 conns",
     [("rps", "req/s"), ("cpu_us", "CPU µs / request"), ("errors", "non-2xx + socket errors (sum)")],
     base="plain", other="rules", goals={"rps": ("≥ 0.97×", lambda r: r >= 0.97)})
pair("auth_redis", "authenticated (Redis session store, cache warm) vs public route (portcullis only), 50 conns",
     [("rps", "req/s"), ("p99_us", "p99 latency (µs)"), ("cpu_us", "CPU µs / request"),
      ("errors", "non-2xx + socket errors (sum)")],
     base="public", other="auth", goals={"rps": ("≥ 0.95×", lambda r: r >= 0.95)})
pair("auth_redis_c1", "one connection, sequential requests: warm cache vs cold cache (every check one Redis GET)",
     [("rps", "req/s"), ("p50_us", "p50 latency (µs)"), ("p99_us", "p99 latency (µs)"),
      ("cpu_us", "CPU µs / request"), ("errors", "non-2xx + socket errors (sum)")],
     base="warm", other="cold")


NO_RATIO = {"peak_rss_kib", "backend_conns", "backend_conns_cold"}


def fmt(v):
    if v != v:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cmd_report(tsv):
    data, notes = {}, []
    for line in open(tsv):
        parts = line.rstrip("\n").split("\t")
        if parts[0] == "note":
            notes.append(parts[1])
            continue
        if parts[0] == "row" or len(parts) != 5:
            continue
        scen, metric, proxy, rnd, val = parts
        data.setdefault((scen, metric, proxy), {})[int(rnd)] = float(val)

    def median(d):
        vals = [v for v in d.values() if v == v]
        return statistics.median(vals) if vals else float("nan")

    print("| scenario | metric | baseline (median) | measured (median) | measured/baseline per round | median of ratios | goal |")
    print("|---|---|---:|---:|---|---:|---|")
    for scen, title, metric, label, base, other, gtext, gcheck in ROWS:
        b, o = data.get((scen, metric, base), {}), data.get((scen, metric, other), {})
        if not b and not o:
            continue
        bl, ol = ("", "") if base == "nginx" else (f" ({base})", f" ({other})")
        if metric == "errors":
            nv, pv = sum(b.values()), sum(o.values())
            print(f"| {title} | {label} | {nv:.0f}{bl} | {pv:.0f}{ol} | | | 0 {'✅' if nv + pv == 0 else '❌'} |")
            continue
        ratios = [o[r] / b[r] for r in sorted(set(b) & set(o)) if b[r] and b[r] == b[r] and o[r] == o[r]]
        if metric in NO_RATIO:  # absolute figures: a ratio of two near-zero numbers says nothing
            print(f"| {title} | {label} | {fmt(median(b))}{bl} | {fmt(median(o))}{ol} | "
                  f"{' / '.join(fmt(o[r]) for r in sorted(o))} | — | |")
            continue
        mr = statistics.median(ratios) if ratios else float("nan")
        goal = gtext
        if gcheck and ratios:
            goal += " ✅" if gcheck(mr) else " ❌"
        print(f"| {title} | {label} | {fmt(median(b))}{bl} | {fmt(median(o))}{ol} | "
              f"{' '.join(f'{x:.2f}' for x in ratios) or '—'} | {f'{mr:.2f}×' if ratios else '—'} | {goal} |")
    load = data.get(("machine", "loadavg", "all"), {})
    if load:
        print()
        print(f"Load average (1 min) at the start of each round: {' '.join(f'{v:.2f}' for _, v in sorted(load.items()))}.")
    if notes:
        print()
    for n in notes:
        print(n)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"bulk-backend": cmd_bulk_backend, "upload": cmd_upload, "ws-echo": cmd_ws_echo, "ws-client": cmd_ws_client,
          "report": cmd_report}.get(cmd.replace("_", "-"))
    if fn is None:
        print(__doc__)
        return 2
    return fn(*args) or 0


if __name__ == "__main__":
    sys.exit(main())
