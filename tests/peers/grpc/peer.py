#!/usr/bin/python3
"""gRPC test peer (Debian's python3-grpcio; no generated code: messages
are raw bytes).

  peer.py serve [--tls CERT KEY]      prints "listening PORT", serves
                                      test.Echo until stdin closes
  peer.py call TARGET AUTHORITY [--tls CA] SCENARIO
                                      runs one scenario, prints JSON

Methods of test.Echo: Unary (b"echo:" + request), Stream (the request
three times, numbered), Bidi (each request back, upper-cased), Fail
(PERMISSION_DENIED "not for you"), Slow (answers after 3 s), Stall
(streams "first", then "second" 4 s later).
"""
import json
import sys
import time
from concurrent import futures

import grpc


def unary(req, ctx):
    return b"echo:" + req


def stream(req, ctx):
    for i in range(3):
        yield req + b"-" + str(i).encode()


def bidi(it, ctx):
    for req in it:
        yield req.upper()


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")


def stall(req, ctx):
    yield b"first"
    time.sleep(4)
    yield b"second"


def slow(req, ctx):
    time.sleep(3)
    return req


def serve(args):
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Stall": grpc.unary_stream_rpc_method_handler(stall),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    if args and args[0] == "--tls":
        cert = open(args[1], "rb").read()
        key = open(args[2], "rb").read()
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening", port, flush=True)
    sys.stdin.read()
    server.stop(0)


def call(args):
    target, authority = args[0], args[1]
    rest = args[2:]
    opts = [("grpc.default_authority", authority)]
    if rest[0] == "--tls":
        creds = grpc.ssl_channel_credentials(root_certificates=open(rest[1], "rb").read())
        opts.append(("grpc.ssl_target_name_override", authority))
        channel = grpc.secure_channel(target, creds, options=opts)
        rest = rest[2:]
    else:
        channel = grpc.insecure_channel(target, options=opts)
    scenario = rest[0]
    out = {}
    try:
        if scenario == "all":
            out["unary"] = channel.unary_unary("/test.Echo/Unary")(b"hi", timeout=10).decode()
            out["stream"] = [m.decode() for m in channel.unary_stream("/test.Echo/Stream")(b"s", timeout=10)]
            out["bidi"] = [m.decode() for m in channel.stream_stream("/test.Echo/Bidi")(iter([b"a", b"b", b"c"]), timeout=10)]
            try:
                channel.unary_unary("/test.Echo/Fail")(b"x", timeout=10)
                out["fail"] = "no error"
            except grpc.RpcError as e:
                out["fail"] = [e.code().name, e.details()]
        elif scenario == "stall":
            got = []
            try:
                for m in channel.unary_stream("/test.Echo/Stall")(b"x", timeout=20):
                    got.append(m.decode())
                out["status"] = "OK"
            except grpc.RpcError as e:
                out["status"] = e.code().name
            out["got"] = got
        else:
            method = {"slow": "/test.Echo/Slow", "unary": "/test.Echo/Unary"}[scenario]
            timeout = float(rest[1]) if len(rest) > 1 else 10
            try:
                channel.unary_unary(method)(b"x", timeout=timeout)
                out["status"] = "OK"
            except grpc.RpcError as e:
                out["status"] = e.code().name
                out["details"] = e.details()
    except grpc.RpcError as e:
        out["error"] = [e.code().name, e.details()]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    {"serve": serve, "call": call}[sys.argv[1]](sys.argv[2:])
