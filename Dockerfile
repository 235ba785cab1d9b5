# agent-run as a container entrypoint: the launcher is PID 1, reaps zombies, forwards
# signals and drains the agent on `docker stop`. Build: docker build -t agent-run:0.1.0 .
# Your own agent goes on top of this image: see deploy/Dockerfile.agent and README's Docker.
# Least privilege (README): the launcher runs as root, as nginx's master process does, and
# starts every agent process as `agent` (uid 10001, AGENT_RUN_USER), which can read neither
# the store, nor the key, nor the launcher's memory. Of root's capabilities the launcher
# needs SETUID, SETGID, KILL and CHOWN (README's `docker run` drops the rest).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The sealed store: mount it read-only (a volume, a ConfigMap) at this path; the master
    # key comes separately (a file at /run/secrets/agent-run.key, or AGENT_RUN_MASTER_KEY).
    AGENT_RUN_HOME=/var/lib/agent-run \
    # Control sockets: created 0700 by the launcher, since the store mount is read-only.
    AGENT_RUN_RUNTIME_DIR=/tmp/agent-run \
    # Workers and session processes run as this user; the launcher stays root. Running the
    # container as `agent` itself (--user 10001) also works: then there is nothing to drop.
    AGENT_RUN_USER=agent \
    # /healthz, /readyz and /metrics for HEALTHCHECK and orchestrator probes.
    AGENT_RUN_HEALTH=0.0.0.0:8099

WORKDIR /app
COPY pyproject.toml README.md ./
COPY launcher ./launcher
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin agent \
    && install -d -m 0700 /var/lib/agent-run
# The agents' code is root's and readable by them: an agent cannot rewrite itself.
COPY sample_agents ./sample_agents

# No USER: the launcher is root (see the top); the agent is AGENT_RUN_USER.
EXPOSE 8099
# agent-run drains on SIGTERM; give `docker stop -t` as long as your --drain-timeout.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8099/healthz', timeout=2)"]
ENTRYPOINT ["agent-run"]
CMD ["sample_agents/worker.py"]
