"""A Twilio bot written as Pipecat's twilio-chatbot example is, unchanged for agent-run.

No `create_transport()`: the bot reads `runner_args.websocket` itself, parses Twilio's first
messages with `parse_telephony_websocket()`, builds a `TwilioFrameSerializer` and a
`FastAPIWebsocketTransport` on that websocket, and echoes the caller's audio back (8 kHz in
and out: byte for byte). With $SESSION_DIR set, it writes <session_id>.json at the start.
"""

import json
import os

from dotenv import load_dotenv
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import WebSocketRunnerArguments
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

load_dotenv(override=True)


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


async def bot(runner_args: WebSocketRunnerArguments):
    transport_type, call_data = await parse_telephony_websocket(runner_args.websocket)
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        account_sid=os.getenv("TWILIO_ACCOUNT_SID", ""),
        auth_token=os.getenv("TWILIO_AUTH_TOKEN", ""),
    )
    transport = FastAPIWebsocketTransport(
        websocket=runner_args.websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    directory = os.environ.get("SESSION_DIR")
    if directory:
        report = {"transport_type": transport_type, "call_id": call_data["call_id"]}
        path = os.path.join(directory, f"{runner_args.session_id}.json")
        with open(path + ".tmp", "w") as stream:
            json.dump({**report, "pid": os.getpid()}, stream)
        os.replace(path + ".tmp", path)

    pipeline = Pipeline([transport.input(), Echo(), transport.output()])
    task = PipelineWorker(
        pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await task.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(task)
    await runner.run()


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
