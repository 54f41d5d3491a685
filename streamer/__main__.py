"""`python -m streamer`: the live transcription server (see `python -m streamer --help`)."""

import sys

from streamer.cli import main

if __name__ == "__main__":
    sys.exit(main())
