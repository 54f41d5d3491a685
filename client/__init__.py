"""Command-line client for the streamer server (Deepgram-compatible live transcription).

Run it with `python -m client --lang en` (microphone) or `python -m client --file talk.wav`; see `client.cli`.
To call it in-process (tests, scripts), build a `ClientOptions` and `await run_client(options)`, or call
`main(argv)`; both return the process exit code. `run_stream(options)` also returns the finals and the
transcript.
"""

from client.cli import main
from client.options import ClientOptions
from client.run import RunReport, run_client, run_stream

__all__ = ["ClientOptions", "RunReport", "main", "run_client", "run_stream"]
