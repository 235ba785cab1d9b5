# agent-run as a container entrypoint: the launcher is PID 1, reaps zombies, forwards
# signals and drains the agent on `docker stop`. Build: docker build -t agent-run:0.1.0 .
# Your own agent goes on top of this image: see deploy/Dockerfile.agent and README's Docker.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The sealed store: mount it read-only (a volume, a ConfigMap) at this path; the master
    # key comes separately (a file at /run/secrets/agent-run.key, or AGENT_RUN_MASTER_KEY).
    AGENT_RUN_HOME=/var/lib/agent-run \
    # Control sockets: writable by whichever uid runs the container (`docker run --user`),
    # created 0700 by the launcher, since the store mount is read-only.
    AGENT_RUN_RUNTIME_DIR=/tmp/agent-run \
    # /healthz, /readyz and /metrics for HEALTHCHECK and orchestrator probes.
    AGENT_RUN_HEALTH=0.0.0.0:8099

WORKDIR /app
COPY pyproject.toml README.md ./
COPY launcher ./launcher
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin agent \
    && install -d -o agent -g agent -m 0700 /var/lib/agent-run
COPY sample_agents ./sample_agents

USER 10001:10001
EXPOSE 8099
# agent-run drains on SIGTERM; give `docker stop -t` as long as your --drain-timeout.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8099/healthz', timeout=2)"]
ENTRYPOINT ["agent-run"]
CMD ["sample_agents/worker.py"]
