"""Live-caption client for the streamer server (`python -m client`)."""
