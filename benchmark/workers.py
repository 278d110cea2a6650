"""DataLoader worker processes, started safely: from a fork server, never by forking a threaded process.

Forking a process that runs threads (PyTorch's intra-op pool, CUDA's threads, the extraction's
file-reading threads) can deadlock the child on a lock another thread held at fork time; Python
3.12+ warns about it (``DeprecationWarning: ... use of fork() may lead to deadlocks``). Workers
are therefore started by multiprocessing's *forkserver*: one clean single-threaded process,
started once per run, that imports torch, numpy, PIL, pandas and the harness's data modules once
(``PRELOAD``) and forks each worker from that state, so a worker starts in milliseconds instead
of re-importing torch as ``spawn`` would. Costs measured on the 2-core CPU: docs/speed.md.

A consequence shared with ``spawn``: the dataset object is pickled to each worker, and a script
that starts workers needs the ``if __name__ == "__main__":`` guard (cli.py and benchmarks/ have it).
"""
from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext
from typing import Any

from torch.utils.data import DataLoader, Dataset

START_METHOD = "forkserver"
# imported once by the fork server; every worker inherits them ("__main__" = the running script,
# imported as __mp_main__ under its guard, so workers do not re-import it one by one)
PRELOAD = ("__main__", "numpy", "pandas", "PIL.Image", "torch", "torchvision.transforms",
           "datasets.base", "pretrained.preprocessing", "evaluators.augment", "invariances.transforms")

_context: BaseContext | None = None


def worker_context() -> BaseContext:
    """The multiprocessing context DataLoader workers start from (forkserver, preloaded)."""
    global _context
    if _context is None:
        context = multiprocessing.get_context(START_METHOD)
        context.set_forkserver_preload(list(PRELOAD))
        _context = context
    return _context


def start_worker_server() -> None:
    """Start the fork server now, in the background (it imports ``PRELOAD`` while the caller works on)."""
    from multiprocessing import forkserver
    worker_context()
    forkserver.ensure_running()


def data_loader(dataset: Dataset, *, num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """``DataLoader(dataset, ...)`` whose workers (if any) start from :func:`worker_context`."""
    if num_workers > 0:
        kwargs.setdefault("multiprocessing_context", worker_context())
    return DataLoader(dataset, num_workers=num_workers, **kwargs)
