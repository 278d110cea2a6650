"""The probe commands through the CLI: help, a run, the leaderboard table, the main-job presets."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import cli
from evaluators.registry import EVALUATORS
from tests.probe_helpers import one_thread

single_thread = pytest.fixture(autouse=True)(one_thread)

PROBES = ("invariance", "multiview-invariance", "saliency", "dip")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_probe_commands_have_help_with_options_and_presets():
    for name in PROBES:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert "Presets:" in result.output and "quick" in result.output
    assert "perturbations_per_eval" in invoke("saliency", "--help").output


def test_every_probe_has_a_quick_main_job_preset():
    for name in PROBES:
        spec = EVALUATORS.get(name)
        assert spec.kind == "probe" and spec.benchmark_preset == "quick" and "quick" in spec.presets


def test_invariance_command_and_leaderboard(results_dir, tiny_encoder, mini_synthderm):
    result = invoke("invariance", "--model", "tiny-cnn", "--dataset", "synthderm-mini", "--no-cache",
                    "--results", str(results_dir), "-o", 'transforms=["rotation", "hue"]', "-o", "k=4",
                    "-o", "num_images=3", "-o", "figures=false")
    assert result.exit_code == 0, result.output
    assert "invariance | tiny-cnn | synthderm-mini | mean_similarity =" in result.output
    board = invoke("leaderboard", "--results", str(results_dir))
    assert board.exit_code == 0
    assert "on synthderm-mini: all metrics" in board.output and "| rotation " in board.output


def test_bad_probe_options_are_usage_errors(results_dir, tiny_encoder, mini_synthderm):
    result = invoke("invariance", "--model", "tiny-cnn", "--dataset", "synthderm-mini", "--no-cache",
                    "--results", str(results_dir), "-o", 'transforms=["spin"]')
    assert result.exit_code == 2 and "option 'transforms' must be a non-empty list of distinct values among 'rotation'" in result.output
    assert 'got ["spin"]' in result.output
    result = invoke("saliency", "--model", "tiny-cnn", "--dataset", "synthderm-mini", "--no-cache",
                    "--results", str(results_dir), "-o", "window=64")
    assert result.exit_code == 2 and "larger than the image" in result.output
