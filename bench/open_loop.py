"""Open-loop HTTP load: one request every 1/RATE s, whatever the server's pace.

Run: python bench/open_loop.py --port P [--rate 1000] [--seconds 20] --out samples.txt
Each request opens a new connection (Connection: close), so it exercises accept on whichever
worker owns the port at that moment. Requests are sent on a fixed schedule from one thread
with non-blocking sockets: a slow answer never delays the next request, and latency is
counted from the scheduled send time (no coordinated omission). A closed-loop client, by
contrast, stops sending while the server is slow and under-reports exactly the stalls a
rollout causes.

With --realtime (root), the client runs under SCHED_FIFO: it stands for users on other
machines, so it must not wait in the run queue behind the very server work it measures (on a
2-core machine, a co-located client otherwise adds its own scheduling delay to every figure).

Output: one line per request, `start_monotonic latency_s ok` (CLOCK_MONOTONIC is shared by
all processes, so the caller can place its own events on the same time line).
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import socket
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
TIMEOUT_S = 5.0


class Request:
    __slots__ = ("data", "scheduled", "sent", "sock")

    def __init__(self, scheduled: float, sock: socket.socket) -> None:
        self.scheduled = scheduled
        self.sock = sock
        self.sent = False
        self.data = b""


def run(port: int, rate: float, seconds: float) -> list[tuple[float, float, bool]]:
    selector = selectors.DefaultSelector()
    samples: list[tuple[float, float, bool]] = []
    pending: dict[int, Request] = {}
    interval = 1.0 / rate
    start = time.monotonic()
    end = start + seconds
    next_send = start

    def finish(request: Request, ok: bool) -> None:
        selector.unregister(request.sock)
        request.sock.close()
        del pending[id(request)]
        samples.append((request.scheduled, time.monotonic() - request.scheduled, ok))

    while True:
        now = time.monotonic()
        while next_send <= now and next_send < end:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            request = Request(next_send, sock)
            err = sock.connect_ex(("127.0.0.1", port))
            pending[id(request)] = request
            selector.register(sock, selectors.EVENT_WRITE, request)
            if err not in (0, errno.EINPROGRESS):
                finish(request, False)
            next_send += interval
        if next_send >= end and not pending:
            break
        wait = max(0.0, min(next_send, end) - time.monotonic()) if next_send < end else 0.05
        for key, _ in selector.select(wait):
            request = key.data
            try:
                if not request.sent:
                    if request.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        finish(request, False)
                        continue
                    request.sock.send(REQUEST)
                    request.sent = True
                    selector.modify(request.sock, selectors.EVENT_READ, request)
                    continue
                chunk = request.sock.recv(4096)
            except OSError:
                finish(request, False)
                continue
            if chunk:
                request.data += chunk
            else:
                finish(request, request.data.startswith(b"HTTP/1.1 200"))
        now = time.monotonic()
        for request in [r for r in pending.values() if now - r.scheduled > TIMEOUT_S]:
            finish(request, False)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--out", required=True)
    parser.add_argument("--realtime", action="store_true", help="SCHED_FIFO (needs root)")
    args = parser.parse_args()
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    samples = run(args.port, args.rate, args.seconds)
    with open(args.out, "w") as out:
        out.writelines(f"{start:.6f} {latency:.6f} {int(ok)}\n" for start, latency, ok in samples)


if __name__ == "__main__":
    main()
