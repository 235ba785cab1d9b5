"""A LiveKit agent whose code pins its health server's port (PINNED_PORT), as some do."""

import math
import os

from livekit.agents import AgentServer, JobContext, cli

server = AgentServer(port=int(os.environ["PINNED_PORT"]), load_threshold=math.inf)


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    ctx.shutdown("no calls here")


if __name__ == "__main__":
    cli.run_app(server)
