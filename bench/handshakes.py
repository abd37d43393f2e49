#!/usr/bin/env python3
"""
New-connection rate against a listener, TLS or plain: a client that opens a
fresh connection each time (TCP connect, TLS handshake when asked, then
optionally one GET with Connection: close) one after another, for a bounded
time. What a TLS edge pays per new client, apart from keep-alive traffic.

    python bench/handshakes.py --port 8443 --tls [--request] [--duration 3]
    python bench/handshakes.py --port 8080 --request

Prints one JSON object. The client is sequential and single-threaded, so
this is a latency-bound rate (its inverse is the time per connection,
client work included); run the client on another core than the server.
bench/run calls L{measure} for wasmgate over TLS and plain.
"""
from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from typing import Any


def _client_context() -> ssl.SSLContext:
    # Self-signed certificates made at run time: encrypt, do not verify.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _once(
    host: str, port: int, *, context: ssl.SSLContext | None, server_name: str, request: bool, timeout: float
) -> tuple[bool, str]:
    """One connection; (ok, TLS version or "")."""
    sock = socket.create_connection((host, port), timeout=timeout)
    version = ""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=server_name)
            version = sock.version() or ""
        if not request:
            return True, version
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: " + server_name.encode() + b"\r\n"
            b"User-Agent: wasmgate-bench/1 (handshakes)\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.1 2"), version
    finally:
        try:
            sock.close()
        except OSError:
            pass


def measure(
    host: str,
    port: int,
    *,
    tls: bool,
    duration: float = 3.0,
    request: bool = False,
    server_name: str = "localhost",
    max_connections: int = 1_000_000,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """
    Open connections one after another for C{duration} seconds; the rate,
    the mean time per connection and how many failed.
    """
    context = _client_context() if tls else None
    ok = failed = 0
    versions: set[str] = set()
    errors: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline and ok + failed < max_connections:
        try:
            good, version = _once(
                host, port, context=context, server_name=server_name, request=request, timeout=timeout
            )
        except (OSError, ssl.SSLError) as e:
            good, version = False, ""
            kind = type(e).__name__
            errors[kind] = errors.get(kind, 0) + 1
        if good:
            ok += 1
            if version:
                versions.add(version)
        else:
            failed += 1
    elapsed = time.perf_counter() - started
    total = ok + failed
    return {
        "target": f"{host}:{port}",
        "tls": tls,
        "request": request,
        "connections": total,
        "ok": ok,
        "failed": failed,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "per_second": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "ms_per_connection": round(elapsed / total * 1000, 3) if total else None,
        "tls_versions": sorted(versions),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback only")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls", action="store_true", help="do a TLS handshake on each connection")
    parser.add_argument("--request", action="store_true", help="send one GET on each connection")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds (bounded: at most 60)")
    parser.add_argument("--server-name", default="localhost", help="SNI and Host")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("this benchmark only targets loopback addresses")
    result = measure(
        args.host,
        args.port,
        tls=args.tls,
        duration=min(args.duration, 60.0),
        request=args.request,
        server_name=args.server_name,
    )
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
