"""Fixtures: dataset replicas written into tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.datasets.replicas import make_ham10000


@pytest.fixture
def ham_root(tmp_path: Path) -> Path:
    root = tmp_path / "ham10000"
    make_ham10000(root)
    return root
