"""An HTTP agent that reports readiness with notify_ready() and serves on AGENT_RUN_PORT.

Run it:  agent-run --secrets demo --workers 4 --ready notify --port-base 8000 \
             sample_agents/http_agent.py
or, with all workers sharing one port (SO_REUSEPORT):  SHARED_PORT=8000 agent-run ...
GET / answers the secrets version and a short hash of DEMO_API_KEY: enough to see which
values a worker runs with, never the value itself. SIGTERM: finish in-flight requests, exit.
"""

import hashlib
import http.server
import os
import signal
import socket
import threading

from launcher import notify_ready


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        value = os.environ.get("DEMO_API_KEY", "")
        body = (
            f"version={os.environ.get('AGENT_RUN_SECRETS_VERSION', '-')} "
            f"key_sha={hashlib.sha256(value.encode()).hexdigest()[:12]} "
            f"worker={os.environ.get('AGENT_RUN_WORKER', '-')} pid={os.getpid()}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # Several workers (old and new, during a rollout) accept on one port.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


port = int(os.environ.get("SHARED_PORT") or os.environ.get("AGENT_RUN_PORT") or 8000)
server = Server(("127.0.0.1", port), Handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
notify_ready(f"serving on 127.0.0.1:{port}")
server.serve_forever(poll_interval=0.05)
server.server_close()
