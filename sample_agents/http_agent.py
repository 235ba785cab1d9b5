"""An HTTP agent that reports readiness with notify_ready() and serves on AGENT_RUN_PORT.

Run it:  agent-run --secrets demo --workers 4 --ready notify --port-base 8000 \\
             sample_agents/http_agent.py
or, with all workers sharing one port (SO_REUSEPORT):  SHARED_PORT=8000 agent-run ...
GET / answers the secrets version and a short hash of DEMO_API_KEY: enough to see which
values a worker runs with, never the value itself. SIGTERM: stop accepting, finish the
requests in flight, exit.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length) on socketserver: `http.server`
costs ~30 ms to import (email, http.client, ssl), which would dominate how fast a
replacement worker can serve after a rollout.
"""

import hashlib
import os
import signal
import socket
import socketserver
import threading

from launcher import notify_ready

value = os.environ.get("DEMO_API_KEY", "")
BODY = (
    f"version={os.environ.get('AGENT_RUN_SECRETS_VERSION', '-')} "
    f"key_sha={hashlib.sha256(value.encode()).hexdigest()[:12]} "
    f"worker={os.environ.get('AGENT_RUN_WORKER', '-')} pid={os.getpid()}\n"
).encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
stopping = threading.Event()


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            request = self.rfile.readline(8192)
            if not request:
                return
            close = False
            while True:  # headers
                line = self.rfile.readline(8192)
                if line in (b"\r\n", b"\n", b""):
                    break
                if line.lower().startswith(b"connection:") and b"close" in line.lower():
                    close = True
            close = close or request.rstrip().endswith(b"HTTP/1.0") or stopping.is_set()
            self.wfile.write(
                RESPONSE
                if not close
                else RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            )
            if close:
                return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = False  # on shutdown, wait for the requests in flight
    block_on_close = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # Several workers (old and new, during a rollout) accept on one port.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def on_term(signum: int, frame: object) -> None:
    stopping.set()
    threading.Thread(target=server.shutdown).start()


port = int(os.environ.get("SHARED_PORT") or os.environ.get("AGENT_RUN_PORT") or 8000)
server = Server(("127.0.0.1", port), Handler)
signal.signal(signal.SIGTERM, on_term)
notify_ready(f"serving on 127.0.0.1:{port}")
server.serve_forever(poll_interval=0.05)
server.server_close()
