"""A real livekit-agents worker, unmodified for agent-run: `python livekit_agent.py start`.

    agent-run platform set livekit LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... \\
        --stdin LIVEKIT_API_SECRET
    agent-run --secrets demo --workers 2 --ready 'log:registered worker' \\
        sample_agents/livekit_agent.py start

A default `AgentServer()`: its health server's port is left to agent-run (README, "LiveKit
agents"). Each job reports which secrets version it got and a hash of DEMO_API_KEY (never the
value), then stays in its "call": for the job metadata's `seconds`, or, when the metadata
names a `call` URL (the tests' stand-in LiveKit server), until that request is answered.
A voice agent would `await ctx.connect()` and start an `AgentSession` here instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

from livekit.agents import AgentServer, JobContext, cli

server = AgentServer()


def _report(ctx: JobContext) -> dict[str, object]:
    secret = os.environ.get("DEMO_API_KEY", "")
    return {
        "job": ctx.job.id,
        "pid": os.getpid(),
        "secrets_version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "demo_api_key_sha256": hashlib.sha256(secret.encode()).hexdigest()[:16],
    }


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    report = _report(ctx)
    print(f"job {ctx.job.id}: {json.dumps(report)}", flush=True)
    metadata = json.loads(ctx.job.metadata or "{}")
    if "call" in metadata:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            timeout = aiohttp.ClientTimeout(total=None)
            async with session.post(metadata["call"], json=report, timeout=timeout) as reply:
                await reply.read()
    else:
        await asyncio.sleep(float(metadata.get("seconds", 1)))
    ctx.shutdown("call ended")


if __name__ == "__main__":
    cli.run_app(server)
