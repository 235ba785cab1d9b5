"""A Pipecat bot written as Pipecat's telephony starters are, unchanged for agent-run.

`create_transport()` detects the provider (Twilio, Exotel...) from the call's first messages
and builds a `FastAPIWebsocketTransport` with the provider's serializer; the pipeline echoes
every audio frame back to the caller. At 8 kHz in and out nothing is resampled, so the
caller gets its own audio back byte for byte.

With $SESSION_DIR set, it writes <session_id>.json when the call starts (argument type,
body, provider, call id, secrets version, pid) and <session_id>.end when the call is over.
"""

import hashlib
import json
import os

from dotenv import load_dotenv
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams
from pipecat.workers.runner import WorkerRunner

load_dotenv(override=True)  # as Pipecat's starters do

SAMPLE_RATE = 8000


class Echo(FrameProcessor):
    """Sends the caller's audio straight back."""

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(
                    audio=frame.audio,
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
            )
        else:
            await self.push_frame(frame, direction)


def _write(name, data):
    directory = os.environ.get("SESSION_DIR")
    if directory:
        path = os.path.join(directory, name)
        with open(path + ".tmp", "w") as stream:
            json.dump(data, stream)
        os.replace(path + ".tmp", path)


def _params():
    return FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True)


async def bot(runner_args: RunnerArguments):
    transport = await create_transport(runner_args, {"twilio": _params, "exotel": _params})
    key = os.environ.get("DEMO_API_KEY", "")
    _write(
        f"{runner_args.session_id}.json",
        {
            "type": type(runner_args).__name__,
            "mro": [cls.__name__ for cls in type(runner_args).__mro__],
            "session_id": runner_args.session_id,
            "body": runner_args.body,
            "transport_type": runner_args.transport_type,
            "call_id": runner_args.call_data.call_id,
            "pid": os.getpid(),
            "version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
            "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        },
    )

    pipeline = Pipeline([transport.input(), Echo(), transport.output()])
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await task.cancel()

    try:
        runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
        await runner.add_workers(task)
        await runner.run()
    finally:
        _write(f"{runner_args.session_id}.end", {"pid": os.getpid()})


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
