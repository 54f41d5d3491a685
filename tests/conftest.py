"""Shared fixtures: where the real speech lives, and small audio helpers."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def eval_data_dir() -> Path | None:
    """`STREAMER_EVAL_DATA`, else ../shared/data beside the project, if it holds a MANIFEST.tsv."""
    env = os.environ.get("STREAMER_EVAL_DATA")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "data"]
    for path in candidates:
        if (path / "MANIFEST.tsv").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def eval_data() -> Path:
    path = eval_data_dir()
    if path is None:
        pytest.skip("real speech not found: set STREAMER_EVAL_DATA or put ../shared/data beside the project")
    return path


@pytest.fixture(scope="session")
def manifest(eval_data: Path) -> list[dict[str, str]]:
    with open(eval_data / "MANIFEST.tsv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))
