"""A small benchmark grid killed with SIGKILL at several points, and two concurrent runs on one results folder.

Each run is a forked child process running ``cli.py benchmark`` (the test process has already
imported everything, so a child costs only its compute). A fault kills the child with SIGKILL
from inside (the same file-system state as ``kill -9`` from outside, at a moment chosen exactly):
during a feature extraction, half-way through a record write, or right after a record is written.
The child logs each cell it starts computing, so the reruns can be checked to redo nothing.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmark.records import load_records
from benchmark.testing import tiny_encoder_spec
from datasets.base import DatasetSpec
from datasets.registry import DATASETS
from datasets.synthderm import build_synthderm
from pretrained.registry import ENCODERS

ENCODER_NAMES = ("fault-a", "fault-b")
DATASET_NAMES = ("fault-mini-a", "fault-mini-b")
CELLS = len(ENCODER_NAMES) * len(DATASET_NAMES)
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def grid(tmp_path, session_tmp):
    """Two tiny encoders x two tiny datasets x knn; a fresh cache folder holding the datasets' renders."""
    for seed, name in enumerate(ENCODER_NAMES, 11):
        ENCODERS.add(name, tiny_encoder_spec(name=name, seed=seed), origin="test")
    for seed, name in enumerate(DATASET_NAMES, 3):
        def build(root, options, seed=seed, name=name):
            dataset = build_synthderm(None, {"n_lesions": 100, "image_size": 16, "seed": seed})
            dataset.name = name
            return dataset
        DATASETS.add(name, DatasetSpec(name=name, build=build, needs_root=False), origin="test")
        build(None, {})  # rendered once into the session cache
    cache = tmp_path / "cache"
    (cache / "synthderm").mkdir(parents=True)
    for render in (Path(session_tmp) / "cache" / "synthderm").glob("*_n100_s16.npz"):
        shutil.copy(render, cache / "synthderm")  # the children read the renders, never render
    args = ["benchmark", "--evaluator", "knn", "--image-size", "16", "--batch-size", "16", "--workers", "0",
            "--device", "cpu",  # the children are forked: CUDA, if the parent started it, cannot be used there
            "--results", str(tmp_path / "results"), "--cache-dir", str(cache)]
    args += [a for name in ENCODER_NAMES for a in ("--model", name)]
    args += [a for name in DATASET_NAMES for a in ("--dataset", name)]
    from cli import cli
    warm = CliRunner().invoke(cli, [*args, "--dry-run"])  # lazy imports done here, once, not in every child
    assert warm.exit_code == 0 and warm.output.count("[run]") == CELLS, warm.output
    yield args, tmp_path / "results", tmp_path / "computed.log"
    for name in ENCODER_NAMES:
        ENCODERS.remove(name)
    for name in DATASET_NAMES:
        DATASETS.remove(name)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(args: list[str], fault: str | None, log: str, out: str, go=None, together=None) -> None:
    """Body of a forked run: install the fault, run the CLI, exit with its code (or die by SIGKILL)."""
    import benchmark.features as features
    import benchmark.records as records
    import benchmark.runner as runner
    kind, _, nth = (fault or "none:0").partition(":")
    count = {"n": 0}

    def due() -> bool:
        count["n"] += 1
        return count["n"] == int(nth)

    real_compute = runner.Runner._compute

    def logged_compute(self, plan):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {plan.path.parent.name}/{plan.path.name}\n")
        if together is not None and count.setdefault("first", True):
            count["first"] = False
            together.wait(30)  # both runs are computing (different cells) at the same moment
        return real_compute(self, plan)
    runner.Runner._compute = logged_compute
    if kind == "extract":  # SIGKILL after the first batch of the nth extraction
        real_run = features._run_encoder

        def run_encoder(*args):  # the progress callback is the last argument
            killer = (lambda n: _kill_self()) if due() else args[-1]
            return real_run(*args[:-1], killer)
        features._run_encoder = run_encoder
    elif kind == "write":  # SIGKILL with half of the nth record written into its temporary file
        real_write = records.atomic_write_text

        def write(path, text):
            if not due():
                return real_write(path, text)
            from benchmark.atomic import temp_path
            with open(temp_path(Path(path)), "w") as handle:
                handle.write(text[:len(text) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            _kill_self()
        records.atomic_write_text = write
    elif kind == "cell":  # SIGKILL right after the nth record is in place (between cells)
        real_record = runner.write_record

        def write_record(record, results_dir):
            path = real_record(record, results_dir)
            if due():
                _kill_self()
            return path
        runner.write_record = write_record
    if go is not None:
        go.wait(30)
    from cli import cli
    result = CliRunner().invoke(cli, args)
    Path(out).write_text(result.output)
    os._exit(result.exit_code)


def _start(args, log, out, fault=None, go=None, together=None):
    process = FORK.Process(target=_child, args=(args, fault, str(log), str(out), go, together))
    process.start()
    return process


def _run(args, log, tmp: Path, fault=None) -> tuple[int, str]:
    out = tmp / f"out-{fault or 'clean'}.txt"
    process = _start(args, log, out, fault)
    process.join(120)
    return process.exitcode, out.read_text() if out.exists() else ""


def _computed(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


def _state(results: Path) -> dict[str, int]:
    """Valid record name -> mtime_ns; fails on any unreadable record."""
    records, errors = load_records(results)
    assert errors == []
    return {f"{path.parent.name}/{path.name}": path.stat().st_mtime_ns for path in (results / "records").rglob("*.json")}


def test_killed_at_several_points_reruns_complete_and_redo_nothing(grid, tmp_path):
    args, results, log = grid
    runs = [("extract:2", 1), ("write:2", 2), ("cell:1", 3), (None, CELLS)]  # (fault, valid records after the run)
    before: dict[str, int] = {}
    for fault, expected in runs:
        started = len(_computed(log))
        code, output = _run(args, log, tmp_path, fault)
        assert code == (0 if fault is None else -signal.SIGKILL), output
        after = _state(results)
        assert len(after) == expected, (fault, sorted(after))
        assert all(after[name] == stamp for name, stamp in before.items())  # nothing finished was rewritten
        assert not set(_computed(log)[started:]) & set(before)  # ... nor computed again
        half_written = [p for p in results.rglob("*.tmp")]
        assert len(half_written) == (fault == "write:2"), half_written  # the kill hit the record write
        before = after
    leftovers = [p.name for p in results.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert leftovers == []  # the half-written record was swept by the next write into its folder
    board = (results / "leaderboard.md").read_text()
    assert all(name in board for name in ENCODER_NAMES + DATASET_NAMES)
    # each cell computed to the end once, plus the two attempts that were killed (extraction, record write)
    assert len(_computed(log)) == CELLS + 2
    for cached in (tmp_path / "cache" / "features").rglob("*.npz"):  # no half-written feature cache either
        with np.load(cached) as data:
            assert data["x"].shape[1] == 16


def test_two_concurrent_runs_share_the_cells(grid, tmp_path):
    args, results, log = grid
    go, together = FORK.Event(), FORK.Barrier(2)
    processes = [_start(args, log, tmp_path / f"out{i}.txt", go=go, together=together) for i in range(2)]
    go.set()
    for process in processes:
        process.join(120)
    outputs = [(tmp_path / f"out{i}.txt").read_text() for i in range(2)]
    assert [p.exitcode for p in processes] == [0, 0], outputs
    assert len(_state(results)) == CELLS
    computed = [line.split() for line in log.read_text().splitlines()]
    assert sorted(name for _, name in computed) == sorted({name for _, name in computed})  # no cell twice
    assert len({pid for pid, _ in computed}) == 2  # both runs did part of the work
    assert not [p for p in results.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert not any("Traceback" in text for text in outputs)
    assert any("another run is computing this cell" in text for text in outputs)
