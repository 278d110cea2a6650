"""Output and cache folders are checked before any compute; --cache-dir moves every cache."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from evaluators.registry import EVALUATORS

KNN = ["knn", "--model", "tiny-cnn", "--dataset", "synthderm-mini", "-o", "ks=[5]", "-o", "primary_k=5", "--workers", "0"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only (chmod; as root, where chmod does not bind, ``chattr +i``)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o555)
    immutable = False
    if _writable(folder):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if _writable(folder):
            pytest.skip("cannot make a read-only folder here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        os.chmod(folder, 0o755)


@pytest.fixture
def no_compute(monkeypatch):
    """Any evaluation or recipe pretraining fails the test: errors must come first."""
    from benchmark import main_job
    monkeypatch.setattr(EVALUATORS.get("knn"), "run", lambda *a: pytest.fail("evaluated before the error"))
    monkeypatch.setattr(main_job, "prepare_recipe_encoders", lambda *a, **k: pytest.fail("pretrained before the error"))
    monkeypatch.setattr(main_job, "recipe_exclusions", lambda *a, **k: pytest.fail("planned before the error"))


def test_a_read_only_results_folder_is_an_error_before_compute(tmp_path, tiny_encoder, mini_synthderm, no_compute):
    with read_only(tmp_path / "results") as results:
        result = invoke(*KNN, "--results", str(results))
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "--results" in result.output and "cannot write into" in result.output
        board = invoke("leaderboard", "--results", str(results))
        assert board.exit_code == 2 and "--out" in board.output


def test_results_or_cache_naming_a_file_is_an_error_before_compute(tmp_path, tiny_encoder, mini_synthderm, no_compute):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for option in ("--results", "--cache-dir"):
        result = invoke(*KNN, option, str(a_file))
        assert result.exit_code == 2 and "is a file, not a folder" in result.output and option in result.output
        result = invoke(*KNN, option, str(a_file / "sub"))
        assert result.exit_code == 2 and "cannot write into" in result.output
    dry = invoke("benchmark", "--dry-run", "--results", str(a_file))
    assert dry.exit_code == 2 and "is a file" in dry.output


def test_benchmark_checks_every_argument_before_pretraining(tmp_path, no_compute):
    result = invoke("benchmark", "--shard", "9/2", "--results", str(tmp_path / "r"))
    assert result.exit_code == 2 and "shard index must be in 0..1" in result.output
    result = invoke("benchmark", "--root", "nonsense", "--results", str(tmp_path / "r"))
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_leaderboard_of_a_missing_folder_creates_nothing(tmp_path):
    result = invoke("leaderboard", "--results", str(tmp_path / "typo"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "typo").exists()


def test_cache_dir_moves_the_render_and_feature_caches(tmp_path, tiny_encoder, session_tmp):
    cache = tmp_path / "my-cache"
    args = ["knn", "--model", "tiny-cnn", "--dataset", "synthderm", "--dataset-option", "n_lesions=100",
            "--dataset-option", "image_size=16", "--dataset-option", "seed=5", "-o", "ks=[5]", "-o", "primary_k=5",
            "--workers", "0", "--results", str(tmp_path / "r"), "--cache-dir", str(cache)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert len(list((cache / "synthderm").glob("*_seed5_n100_s16.npz"))) == 1
    assert list((cache / "features").rglob("*.npz"))
    assert not list((Path(session_tmp) / "cache" / "synthderm").glob("*_seed5_n100_s16.npz"))
