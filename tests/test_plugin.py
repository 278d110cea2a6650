"""A real installed plugin distribution adds an encoder through the `medtransfer.encoders` entry point."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PLUGIN_CODE = '''
"""A third-party encoder for medtransfer."""
from benchmark.testing import tiny_encoder_spec

SPEC = tiny_encoder_spec(name="acme-tiny", width=8, input_size=32, seed=7)
'''

BROKEN_CODE = '''
raise ImportError("this plugin is broken on purpose")
'''


def _install_plugin(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    package = source / "medtransfer_acme"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN_CODE)
    (package / "broken.py").write_text(BROKEN_CODE)
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "medtransfer-acme"
        version = "0.1.0"

        [project.entry-points."medtransfer.encoders"]
        acme-tiny = "medtransfer_acme:SPEC"
        acme-broken = "medtransfer_acme.broken:SPEC"

        [tool.setuptools]
        packages = ["medtransfer_acme"]
    """))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation",
                    "--no-deps", "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    assert list(target.glob("medtransfer_acme-0.1.0.dist-info/entry_points.txt"))
    return target


def _cli(args: list[str], site: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
           "MEDTRANSFER_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)


@pytest.mark.slow
def test_installed_plugin_encoder_is_listed_and_usable(tmp_path):
    site = _install_plugin(tmp_path)
    listed = _cli(["models", "--json"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["acme-tiny"]["dim"] == 8 and "plugin" in rows["acme-tiny"]["origin"]
    assert "acme-broken" in listed.stderr and "broken on purpose" in listed.stderr  # reported, not fatal
    help_run = _cli(["--help"], site, tmp_path)
    assert help_run.returncode == 0
    run = _cli(["linear", "--model", "acme-tiny", "--dataset", "synthderm", "--dataset-option", "n_lesions=100",
                "--dataset-option", "image_size=32", "--results", str(tmp_path / "results"), "--workers", "0"],
               site, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "linear | acme-tiny | synthderm-n100-s32-seed0" in run.stdout
