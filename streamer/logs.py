"""The server's log line format, shared by the command line and worker processes.

logging.basicConfig(level=logging.INFO, format=log_format())  # one server process
logging.basicConfig(level=logging.INFO, format=log_format("w1"))  # a worker of --workers N
"""

from __future__ import annotations


def log_format(process: str | None = None) -> str:
    """The log line format; `process` (`main` for the supervisor, `w1`, `w2`, ... for the workers) goes
    after the level when given, so that every line of a server with workers says where it comes from."""
    where = f" {process}" if process else ""
    return f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s"
