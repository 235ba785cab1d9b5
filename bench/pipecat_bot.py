"""A real Pipecat bot for bench/sessions.py --bot: Pipecat's imports, a pipeline run per session.

It reports as sample_agents/session_bot.py does (SESSION_REPORT_DIR/<session_id>.json with the
secrets version and a hash of DEMO_API_KEY), after building a one-processor pipeline and
running it to its end with Pipecat's own PipelineTask and PipelineRunner.
"""

import hashlib
import json
import os
import time

from pipecat.frames.frames import EndFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineTask
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.runner.types import RunnerArguments


async def bot(runner_args: RunnerArguments) -> None:
    entered_at = time.time()
    key = os.environ.get("DEMO_API_KEY", "")
    report = {
        "session_id": runner_args.session_id,
        "entered_at": entered_at,
        "secrets_version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "key_sha256": hashlib.sha256(key.encode()).hexdigest()[:16] if key else None,
        "pid": os.getpid(),
    }
    directory = os.environ.get("SESSION_REPORT_DIR")
    if directory:
        path = os.path.join(directory, f"{runner_args.session_id}.json")
        with open(path + ".tmp", "w") as stream:
            json.dump(report, stream)
        os.replace(path + ".tmp", path)
    task = PipelineTask(Pipeline([FrameProcessor()]))
    await task.queue_frame(EndFrame())
    await PipelineRunner(handle_sigint=False).run(task)


if __name__ == "__main__":
    print("run me with: agent-run bench/pipecat_bot.py")
