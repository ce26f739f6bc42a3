#!/usr/bin/env python3
"""Scenario F client: open N TLS connections, send one 1 KiB POST on each,
read the answer, then keep every connection open and idle.

Prints one JSON line when all connections are settled:
  {"event": "ready", "opened": N, "ok": N, "failed": N, "statuses": {...},
   "errors": {...}, "seconds": S}
then waits until stdin is closed (or a line is written to it), closes
everything and exits. Source addresses are spread over 127.0.0.2..127.0.0.N
so ephemeral ports never run out. Standard library only.

usage: idle_conns.py PORT COUNT [--concurrency 200] [--sources 8]
"""

import argparse
import asyncio
import collections
import json
import resource
import ssl
import sys
import time

BODY = b"x" * 1024


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def one(i, args, ctx, sem, held, stats):
    src = f"127.0.0.{2 + i % args.sources}"
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", args.port, ssl=ctx, server_hostname="localhost",
                    local_addr=(src, 0), ssl_handshake_timeout=30),
                timeout=60)
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            stats["errors"][f"connect: {type(e).__name__}: {e}"[:120]] += 1
            return
        try:
            head = (b"POST /v1/telemetry HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/octet-stream\r\n"
                    b"Content-Length: 1024\r\n\r\n")
            writer.write(head + BODY)
            await writer.drain()
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=60)
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = 0
            chunked = False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
                if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    chunked = True
            if chunked:  # small bodies only: read to the terminating chunk
                await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), timeout=60)
            elif length:
                await asyncio.wait_for(reader.readexactly(length), timeout=60)
            stats["statuses"][str(status)] += 1
            if 200 <= status < 300:
                stats["ok"] += 1
            else:
                stats["failed"] += 1
            held.append((reader, writer))
        except Exception as e:  # noqa: BLE001
            stats["errors"][f"request: {type(e).__name__}: {e}"[:120]] += 1
            writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--sources", type=int, default=8)
    args = p.parse_args()
    raise_nofile(args.count + 1000)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2

    stats = {"ok": 0, "failed": 0, "statuses": collections.Counter(),
             "errors": collections.Counter()}
    held = []
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.monotonic()
    await asyncio.gather(*(one(i, args, ctx, sem, held, stats) for i in range(args.count)))
    seconds = time.monotonic() - t0
    print(json.dumps({"event": "ready", "opened": len(held), "ok": stats["ok"],
                      "failed": stats["failed"], "statuses": dict(stats["statuses"]),
                      "errors": dict(stats["errors"].most_common(10)),
                      "seconds": round(seconds, 2)}), flush=True)
    # Idle until told to stop (stdin closed or a line written), bounded anyway.
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout=300)
    except asyncio.TimeoutError:
        pass
    # Count the connections the proxy closed meanwhile (should be none).
    closed = sum(1 for r, _ in held if r.at_eof())
    for _, w in held:
        w.transport.abort()
    print(json.dumps({"event": "done", "closed_by_peer": closed}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
