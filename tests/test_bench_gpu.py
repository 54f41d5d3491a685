"""The GPU capacity check: its pure parts (batch-size choice, cost interpolation, capacity search), the
engine's timed batch size, and the whole command in its CPU form (`--device cpu --quick`), so it cannot
rot where there is no GPU. Timing values are never checked, only shapes and signs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.bench import gpu
from streamer.bench.gpu import CostTable, Row, SimSpec, search_capacity
from streamer.engine.batching import BATCH_SIZES, length_groups, pick_max_batch, time_batch_sizes

# A GPU-like curve: a call costs about the same up to a point, then grows with the batch.
GPU_LIKE = {1: 0.010, 2: 0.0105, 4: 0.011, 8: 0.012, 16: 0.015, 32: 0.025, 64: 0.048, 128: 0.095}


def test_pick_max_batch_takes_the_size_past_which_windows_stop_getting_cheaper() -> None:
    # per window: 10, 5.25, 2.75, 1.5, 0.94, 0.78, 0.75, 0.74 ms: beyond 32 nothing is 10% cheaper.
    assert pick_max_batch(GPU_LIKE) == 32
    assert pick_max_batch(GPU_LIKE, gain=0.01) == 128
    # A CPU: a batch costs the sum of its windows, so batching buys nothing.
    assert pick_max_batch({b: 0.006 * b for b in (1, 2, 4, 8)}) == 1
    # A noisy size in between does not stop the choice: every larger size is compared.
    assert pick_max_batch({1: 0.010, 2: 0.020, 4: 0.020, 8: 0.040}) == 4
    with pytest.raises(ValueError):
        pick_max_batch({})


def test_timing_stops_where_the_answer_is() -> None:
    calls: list[int] = []

    def curve(size: int) -> float:
        calls.append(size)
        return GPU_LIKE.get(size, GPU_LIKE[128] * size / 128)

    flat = time_batch_sizes(curve)
    assert flat.stopped == "flat" and list(flat.seconds) == [1, 2, 4, 8, 16, 32, 64, 128] == calls
    assert pick_max_batch(flat.seconds) == 32
    memory = time_batch_sizes(lambda b: None if b > 8 else 0.01)
    assert memory.stopped == "memory" and list(memory.seconds) == [1, 2, 4, 8]
    slow = time_batch_sizes(lambda b: 0.1 * math.sqrt(b), max_call_s=0.25)
    assert slow.stopped == "slow" and list(slow.seconds) == [1, 2, 4, 8]
    assert time_batch_sizes(lambda b: 0.01, (1, 2)).stopped == "sizes"


def test_length_groups_pad_only_similar_lengths() -> None:
    lengths = [16000, 15000, 4000, 3900, 20000]
    padded = length_groups(lengths, 16, padded=True)
    assert [[lengths[i] for i in g] for g in padded] == [[20000, 16000], [15000], [4000, 3900]]
    assert length_groups([5, 5, 5, 7], 2, padded=False) == [[0, 1], [2], [3]]
    assert length_groups([5] * 5, 2, padded=True) == [[0, 1], [2, 3], [4]]


def test_search_capacity_doubles_then_bisects() -> None:
    tried: list[int] = []

    def held_up_to(limit: int) -> Callable[[int], bool]:
        def held(n: int) -> bool:
            tried.append(n)
            return n <= limit

        return held

    assert search_capacity(held_up_to(37), 512, 0.0) == (37, False)
    assert tried[:7] == [1, 2, 4, 8, 16, 32, 64]
    n, capped = search_capacity(held_up_to(300), 512, 0.05)
    assert not capped and 300 / 1.05 <= n <= 300
    assert search_capacity(held_up_to(10**6), 100, 0.05) == (100, True)
    assert search_capacity(held_up_to(0), 100, 0.05) == (0, False)


def _table(per_window_s: float, fixed_s: float = 0.0) -> CostTable:
    def row(samples: int) -> Row:
        scale = samples / 17680
        return Row(samples, {b: (fixed_s + per_window_s * b) * scale for b in (1, 2, 4)})

    return CostTable("synthetic", "float32", "cpu", True, math.nan, row(17680), [row(32000), row(80000)])


def test_cost_table_interpolates_in_batch_size_and_length() -> None:
    table = _table(0.001, fixed_s=0.004)  # 5, 6, 8 ms for 1, 2, 4 partial windows
    assert table.partial.at(3) == pytest.approx(0.007)
    assert table.partial.at(8) == pytest.approx(0.016)  # proportional beyond the largest size timed
    assert table.call_seconds(17680, 1) == pytest.approx(0.005)
    assert table.call_seconds(8000, 1) == pytest.approx(0.005)  # shorter: the shortest row's cost
    middle = table.call_seconds((17680 + 32000) // 2, 1)
    assert table.call_seconds(17680, 1) < middle < table.call_seconds(32000, 1)
    assert table.call_seconds(160000, 2) == pytest.approx(2 * table.call_seconds(80000, 2))
    # The engine's grouping: a final pass and two partial windows make two calls.
    assert table.batch_seconds([80000, 17680, 17680], 16) == pytest.approx(
        table.call_seconds(80000, 1) + table.call_seconds(17680, 2)
    )
    assert table.best_batch == 4  # a fixed cost per call makes larger batches pay


def test_the_simulator_holds_fewer_streams_when_calls_cost_more(eval_data: Path) -> None:
    spec = SimSpec(eval_data, "en", 6.0, 0, 8, 0.0, 0.5, 1.0, "vad")
    cheap = gpu.predict(_table(0.0005), 4, True, spec)
    assert cheap.capacity == 8 and cheap.capped
    # A quarter of a second per partial window, without any gain from batching: the partials fall behind.
    dear = gpu.predict(_table(0.25), 4, True, spec)
    assert dear.capacity < 8 and not dear.capped
    assert all(s.speech_finals > 0 for s in cheap.steps)
    assert dear.steps[-1].busy > cheap.steps[-1].busy


def test_engine_times_its_own_batch_size(tmp_path: Path) -> None:
    from streamer.engine.transformers_ctc import TransformersCTCEngine
    from tests.tiny_models import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny")
    engine = TransformersCTCEngine.load(str(folder), device="cpu")
    try:
        assert engine.max_batch == 1  # auto on a CPU: no timing, one window per call
        chosen = engine.auto_max_batch()
        assert chosen in BATCH_SIZES and engine.max_batch == chosen
    finally:
        engine.close()


def _summary(line: str) -> dict[str, str]:
    assert line.startswith("gpu: ")
    return dict(item.split("=", 1) for item in line.split()[1:])


SUMMARY_KEYS = {
    "device",
    "model",
    "dtype",
    "partial_b1_ms",
    "partial_best_ms",
    "best_batch",
    "graph_speedup",
    "peak_mem_gib",
    "predicted_streams_interim",
    "predicted_streams_final_only",
    "sim_max_streams",
    "streams",
    "predicted_final_p95",
    "predicted_partial_p95",
    "measured_final_p95",
    "measured_partial_p95",
    "measured_finals",
    "frontend_cpu",
    "ok",
}


def test_auto_server_workers_feed_the_streams_and_leave_the_clients_two_cores() -> None:
    assert gpu.auto_server_workers(2, 2) == 1
    assert gpu.auto_server_workers(200, 16) == 1  # 0.6 cores of event loop
    assert gpu.auto_server_workers(1000, 16) == 5  # 3 cores over 0.7 each
    assert gpu.auto_server_workers(10_000, 16) == 14  # all but the load generator's two
    assert gpu.auto_server_workers(1000, 2) == 1
    assert gpu.main(["--device", "cpu", "--quick", "--server-workers", "none"]) == 2


@pytest.mark.slow
def test_quick_run_on_a_cpu(eval_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--quick", "--data", str(eval_data), "--json", str(out_json)]
    # Two worker processes serve the real run (the way a GPU machine runs it), each with its own model.
    assert gpu.main([*argv, "--server-workers", "2"]) == 0
    out = capsys.readouterr().out
    fields = _summary(out.strip().splitlines()[-1])
    assert set(fields) == SUMMARY_KEYS
    assert fields["device"] == "cpu" and fields["model"] == "tiny" and fields["dtype"] == "float32"
    assert float(fields["partial_b1_ms"]) > 0 and float(fields["partial_best_ms"]) > 0
    assert int(fields["best_batch"]) in (1, 2, 4)
    assert fields["graph_speedup"] == "nan" and fields["peak_mem_gib"] == "nan"  # CUDA only
    assert int(fields["predicted_streams_interim"]) >= 1 and int(fields["predicted_streams_final_only"]) >= 1
    assert int(fields["streams"]) >= 1 and int(fields["measured_finals"]) >= 1
    for key in ("predicted_final_p95", "measured_final_p95", "measured_partial_p95", "frontend_cpu"):
        assert float(fields[key]) >= 0
    assert fields["ok"] in ("true", "false")
    assert "recommended: --max-batch" in out and "CUDA graph: n/a" in out and "real run:" in out
    report = json.loads(out_json.read_text())
    assert report["summary"]["streams"] == int(fields["streams"])
    (table,) = report["tables"]
    assert set(table["partial"]["seconds"]) == {"1", "2", "4"} and len(table["finals"]) == 1
    assert {p["interim"] for p in report["predictions"]} == {True, False}
    assert report["real_run"]["step"]["stats"]["dropped"] == 0
    assert report["real_run"]["workers"] == 2 and "--workers 2" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_on_cuda_times_its_batch_and_matches_the_cpu(tmp_path: Path) -> None:
    from streamer.engine.transformers_ctc import TransformersCTCEngine
    from tests.tiny_models import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny")
    cpu = TransformersCTCEngine.load(str(folder), device="cpu", max_batch=4)
    cuda = TransformersCTCEngine.load(str(folder), device="cuda", dtype="float32")  # max batch: timed
    try:
        assert cuda.max_batch in BATCH_SIZES
        rng = np.random.default_rng(3)
        windows = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (17680, 17680, 32000)]
        for a, b in zip(cpu.forward(windows), cuda.forward(windows), strict=True):  # via pinned memory
            np.testing.assert_allclose(a, b, atol=1e-3)
    finally:
        cpu.close()
        cuda.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_run_on_cuda_times_graphs_and_memory(
    eval_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--device", "cuda", "--quick", "--dtypes", "float16", "--data", str(eval_data), "--skip-server"]
    assert gpu.main(argv) == 0
    fields = _summary(capsys.readouterr().out.strip().splitlines()[-1])
    assert fields["device"].startswith("cuda") and float(fields["peak_mem_gib"]) > 0
    assert fields["graph_speedup"] != "nan"  # the partial shape was captured and replayed
    assert fields["streams"] == "0" and int(fields["predicted_streams_interim"]) >= 1
