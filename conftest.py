"""Test-wide isolation: caches and weights folders point into a temporary directory."""
from __future__ import annotations

import os
import tempfile

import pytest

_SESSION_TMP = tempfile.mkdtemp(prefix="medtransfer-tests-")
os.environ["MEDTRANSFER_CACHE"] = os.path.join(_SESSION_TMP, "cache")
os.environ["MEDTRANSFER_WEIGHTS"] = os.path.join(_SESSION_TMP, "weights")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # many tiny ops (L-BFGS): one thread avoids spin-waiting


@pytest.fixture(scope="session")
def session_tmp() -> str:
    return _SESSION_TMP
