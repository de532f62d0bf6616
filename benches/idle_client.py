#!/usr/bin/env python3
"""Holds N idle TLS keep-alive connections open to a proxy on loopback, for benches/idle-conns.

Each connection does a full TLS handshake (ALPN http/1.1, as wrk offers), sends one
`GET PATH HTTP/1.1` request, reads the whole answer and then stays open and silent (while the
others are still opening it asks again every --refresh seconds, so none has been idle for long
when all are open). When all are open the client prints `READY opened=N failed=F seconds=S`
and holds them until SIGTERM or SIGINT, or until --hold seconds pass; then it prints `CLOSED_BY_PEER=K` (connections the server
closed while they were held) and closes them all. Bounded: every connect and answer has a timeout,
and --deadline caps the opening phase. Only 127.0.0.0/8 and ::1 are accepted as targets.
"""

import argparse
import asyncio
import ipaddress
import signal
import ssl
import sys
import time


async def answer(reader, args):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.timeout)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked answers are not handled; use a fixed-length path")
    await asyncio.wait_for(reader.readexactly(length), args.timeout)
    if not 200 <= status < 400:
        raise RuntimeError(f"status {status}")


class Opening:
    """Shared state of the opening phase."""

    def __init__(self, total):
        self.total = total
        self.settled = 0  # opened or failed
        self.opened = set()  # tasks whose connection is open
        self.all_settled = asyncio.Event()
        self.over = asyncio.Event()

    def settle(self):
        self.settled += 1
        if self.settled == self.total:
            self.all_settled.set()


async def connection(args, ctx, sem, request, st):
    try:
        async with sem:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname="localhost"),
                args.timeout,
            )
            writer.write(request)
            await writer.drain()
            await answer(reader, args)
    finally:
        st.settle()
    st.opened.add(asyncio.current_task())
    # While the others open, ask again every --refresh seconds, so that no connection has been
    # idle longer than that (plus the settle time) when the memory is sampled: a proxy that
    # closes idle connections early would otherwise be measured on fewer connections than it
    # had to hold. The connection is in the same idle keep-alive state after each answer.
    while args.refresh > 0 and not st.over.is_set():
        try:
            await asyncio.wait_for(st.over.wait(), args.refresh)
            break
        except asyncio.TimeoutError:
            pass
        writer.write(request)
        await writer.drain()
        await answer(reader, args)
    return reader, writer


async def watch(reader, closed):
    # A held connection reads nothing; EOF or an error means the server closed it.
    try:
        if not await reader.read(1):
            closed.add(id(reader))
    except (ConnectionError, ssl.SSLError, OSError):
        closed.add(id(reader))


async def main(args):
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("idle_client: loopback targets only")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench's own self-signed certificate, on loopback
    ctx.set_alpn_protocols(["http/1.1"])
    request = f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle-client\r\n\r\n".encode()
    sem = asyncio.Semaphore(args.parallel)

    started = time.monotonic()
    st = Opening(args.conns)
    tasks = [asyncio.ensure_future(connection(args, ctx, sem, request, st)) for _ in range(args.conns)]
    try:
        await asyncio.wait_for(st.all_settled.wait(), args.deadline)
    except asyncio.TimeoutError:
        pass
    late = [t for t in tasks if t not in st.opened and not t.done()]
    for t in late:
        t.cancel()
    st.over.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    conns, errors = [], {}
    for r in results:
        if isinstance(r, tuple):
            conns.append(r)
        elif not isinstance(r, asyncio.CancelledError):
            key = type(r).__name__ + ": " + str(r)[:80]
            errors[key] = errors.get(key, 0) + 1
    failed = args.conns - len(conns)
    print(f"READY opened={len(conns)} failed={failed} seconds={time.monotonic() - started:.1f}", flush=True)
    for e, n in sorted(errors.items(), key=lambda x: -x[1])[:5]:
        print(f"  {n} x {e}", file=sys.stderr, flush=True)
    if late:
        print(f"  {len(late)} not open after the {args.deadline} s deadline", file=sys.stderr, flush=True)

    closed = set()
    watchers = [asyncio.ensure_future(watch(r, closed)) for r, _ in conns]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    print(f"CLOSED_BY_PEER={len(closed)}", flush=True)
    for w in watchers:
        w.cancel()
    for _, writer in conns:
        writer.transport.abort()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--path", default="/api/v1/ping")
    p.add_argument("--parallel", type=int, default=128, help="handshakes in flight at once")
    p.add_argument("--timeout", type=float, default=15.0, help="per connect and per answer, s")
    p.add_argument("--deadline", type=float, default=120.0, help="cap on the opening phase, s")
    p.add_argument("--hold", type=float, default=120.0, help="cap on the holding phase, s")
    p.add_argument("--refresh", type=float, default=5.0, help="re-ask while others open, s (0: never)")
    asyncio.run(main(p.parse_args()))
