"""A Pipecat telephony bot for bench/sessions.py: tells the caller, on its websocket, the
moment bot() started, then waits for the caller to hang up.

Served two ways in the same run: `agent-run bench/call_bot.py` (WS /ws handed to a warm
process) and Pipecat's own runner, `python bench/call_bot.py -t exotel` (WS /ws in-process).
"""

import json
import time

from pipecat.runner.types import RunnerArguments


async def bot(runner_args: RunnerArguments):
    entered = time.time()
    await runner_args.websocket.send_text(json.dumps({"entered_at": entered}))
    async for _ in runner_args.websocket.iter_text():
        pass


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
