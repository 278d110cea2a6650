"""Two gloo processes under torchrun give the one-process result (fine-tuning and feature extraction)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import distributed
from benchmark.features import extract_features
from benchmark.records import load_records
from pretrained.encoder import LoadOptions
from tests.conftest import _mini

DRIVER = Path(__file__).with_name("ddp_driver.py")
OPTIONS = {"steps": 6, "batch_size": 8, "eval_every": 3, "train_size": 32, "eval_batch_size": 16, "n_boot": 50}


def test_strided_positions_cover_every_position_once():
    parts = [distributed.strided_positions(11, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert distributed.world_size() == 1 and distributed.is_main_process()  # no process group in the test process
    x = torch.arange(6.0)[:, None]
    assert torch.equal(distributed.gather_strided(x, 6), x)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(run_cell, tiny_encoder, tmp_path, session_tmp):
    reference = run_cell("finetune", "quick", results=tmp_path / "one", **OPTIONS)
    results = tmp_path / "two"
    results.mkdir()
    cli_args = ["--model", "tiny-cnn", "--dataset", "synthderm-mini", "--preset", "quick", "--device", "cpu",
                "--workers", "0", "--results", str(results), "--cache-dir", str(tmp_path / "cache")]
    for key, value in OPTIONS.items():
        cli_args += ["-o", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(DRIVER.parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(DRIVER), str(results), "--", *cli_args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (results / "world_size.txt").read_text() == "2"

    records, errors = load_records(results)
    assert len(records) == 1 and not errors  # rank 0 alone wrote
    record = records[0]
    assert record.extra["world_size"] == 2
    assert record.protocol_hash == reference.protocol_hash
    for name, entry in reference.metrics.items():
        assert record.metrics[name]["value"] == pytest.approx(entry["value"], abs=0.02), name
    one = np.load(next((tmp_path / "one").rglob("test_predictions.npz")))
    two = np.load(next(results.rglob("test_predictions.npz")))
    assert list(one["ids"]) == list(two["ids"])
    np.testing.assert_allclose(two["probabilities"], one["probabilities"], atol=1e-4)
    for a, b in zip(reference.extra["history"], record.extra["history"]):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)

    single = extract_features(tiny_encoder.build(LoadOptions()), _mini({}), num_workers=0, cache_dir=None)
    np.testing.assert_allclose(np.load(results / "features.npy"), single.x, atol=1e-5)
