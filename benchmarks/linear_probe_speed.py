#!/usr/bin/env python
"""Linear-probe solver speed: our protocols next to the physical limit and the seed-style pipeline.

    python benchmarks/linear_probe_speed.py --device cuda                       # synthetic HAM10000 shapes
    python benchmarks/linear_probe_speed.py --device cuda --root DIR/ham10000   # + real HAM10000 features
    python benchmarks/linear_probe_speed.py --device cpu --dims 512 --skip-seed-style   # quick CPU check
    python benchmarks/linear_probe_speed.py --device cuda --dims --root DIR/ham10000 --cold \
        --encoders resnet50-random --skip-parity --cpu-threads 8                         # end to end

For every problem (train/val/test feature matrices) it times, on one machine in one run:

* ``converged``: our default protocol (45 C values, every fit solved to tol, selection on val,
  refit on train+val; bootstrap CIs excluded), with its iteration count;
* the physical limit: the solver time of one C (a cold fit at the chosen C) and a FLOP lower
  bound (the objective/gradient evaluations our solver made x 4 N D K flops at the device's
  measured float64 matmul rate);
* ``parity``: ssl-transfer's protocol with scikit-learn 0.2x's arithmetic (evaluators/linear_parity);
* the seed-style pipeline: today's scikit-learn ``LogisticRegression(warm_start=True)`` walked
  over the same 45 C from 1e6 down, ``max_iter=100`` (ssl-transfer's code with ``multi_class``
  dropped, float32 features as their loaders give), on the CPU, plus its refit; and its ratio;
* on CUDA, the converged protocol again without CUDA graphs (``evaluators/lbfgs.py``), and how
  far its test probabilities are from the graphed run's;
* with ``--root DIR --cold``: end to end, our cold extraction (an empty feature and decoded-image
  cache, after one warm-up extraction) plus our solver, against the seed-style pipeline's PIL
  DataLoader fp32 extraction (timed once over all images, counted twice as the seeds extract
  train+val and then all splits) plus its loop.

Synthetic problems have HAM10000's split sizes and class priors and pooled-ReLU-like features
(non-negative, correlated, uncentred: the conditioning that makes raw-feature L-BFGS slow).
``--root`` adds resnet18-random and resnet50-random features of the real HAM10000, extracted with
the harness's own pipeline and feature cache (``--cache-dir``). A short table is printed last.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.linear import LINEAR_DEFAULTS, linear_probe  # noqa: E402
from evaluators.linear_parity import parity_cs  # noqa: E402
from evaluators import lbfgs  # noqa: E402
from evaluators.lbfgs import LbfgsRun  # noqa: E402
from evaluators.linear_solver import LogisticProblem  # noqa: E402

HAM_SPLITS = {"train": 6009, "val": 1501, "test": 2505}
HAM_PRIORS = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10015  # akiec bcc bkl df mel nv vasc


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray


def synthetic(dim: int, seed: int = 0) -> dict[str, Split]:
    """HAM10000-shaped splits: 7 classes with HAM's priors, pooled-ReLU-like [N, dim] float32 features."""
    rng = np.random.default_rng(seed)
    latent_dim = 64
    means = rng.normal(size=(7, latent_dim)) * 0.12
    mix = rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
    out = {}
    for name, n in HAM_SPLITS.items():
        y = rng.choice(7, size=n, p=HAM_PRIORS)
        latent = means[y] + rng.normal(size=(n, latent_dim))
        x = np.maximum(latent @ mix + 0.5 + 0.1 * rng.normal(size=(n, dim)), 0.0)
        out[name] = Split(x.astype(np.float32), y)
    return out


@dataclass
class HamFeatures:
    splits: dict[str, Split]
    seconds: float  # extraction of all three splits (cold unless the cache held them)
    cache_hit: bool
    context: object  # the EvalContext: its encoder and dataset (for the seed-style extraction)


def ham_features(root: Path, encoder: str, device: torch.device, cache_dir: Path | None,
                 image_size: int | None = None) -> HamFeatures:
    """The harness's own extraction (and feature cache) of ``encoder`` on HAM10000's splits."""
    from benchmark.runner import Runner, RunSettings
    from evaluators.base import EvalContext, ExtractionSettings
    from pretrained.registry import ENCODERS

    results = Path(tempfile.mkdtemp(prefix="linear_probe_speed_"))
    settings = RunSettings(results_dir=results, extraction=ExtractionSettings(device=device, cache_dir=cache_dir,
                                                                                   image_size=image_size),
                           roots={"ham10000": root})
    runner = Runner(settings)
    dataset, splits = runner.dataset("ham10000"), runner.splits("ham10000")
    context = EvalContext(ENCODERS.get(encoder), settings.load_options, dataset, splits, settings.extraction,
                          results / "artifacts")
    context.encoder()  # built outside the timing (the seed-style side builds its network untimed too)
    start = time.perf_counter()
    parts = {name: context.features(name) for name in HAM_SPLITS}
    seconds, hit = time.perf_counter() - start, bool(context.feature_cost()["extraction_cache_hit"])
    print(f"  features {encoder}: {seconds:.1f} s (cache hit: {hit})", flush=True)
    return HamFeatures({name: Split(np.asarray(f.x), np.asarray(f.y)) for name, f in parts.items()}, seconds, hit,
                       context)


def seed_style_extraction(context, device: torch.device, workers: int) -> float:
    """Seconds for the seed's PIL DataLoader + fp32 pass over every image of the context's dataset (once)."""
    from benchmarks.extraction_speed import seed_style_rate

    dataset = context.dataset
    paths = [str(dataset.path(i)) for i in range(len(dataset))]
    rate = seed_style_rate(context.fresh_encoder(), paths, device, workers)
    print(f"  seed-style extraction: {rate:.0f} images/s, {len(paths) / rate:.1f} s per pass", flush=True)
    return len(paths) / rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return time.perf_counter() - start, value


def matmul_rate(device: torch.device, n: int = 4096) -> float:
    """Measured float64 GEMM rate (flop/s) of the device: the ceiling for the solver's products."""
    a = torch.randn(n, n, dtype=torch.float64, device=device)
    a @ a
    seconds, _ = _timed(lambda: [a @ a for _ in range(3)], device)
    return 3 * 2 * n ** 3 / seconds


class EvaluationCounter:
    """Counts the solver's objective evaluations (for the FLOP bound) while installed."""

    def __init__(self):
        self.runs: list[LbfgsRun] = []
        self._original = LbfgsRun.__init__

    @property
    def count(self) -> int:
        return sum(run.evaluations for run in self.runs)

    def __enter__(self):
        counter = self

        def recording(run, *args, **kwargs):
            counter._original(run, *args, **kwargs)
            counter.runs.append(run)
        LbfgsRun.__init__ = recording
        return self

    def __exit__(self, *exc):
        LbfgsRun.__init__ = self._original


def seed_style(splits: dict[str, Split], threads: int | None) -> tuple[float, float, float]:
    """ssl-transfer's loop on today's scikit-learn (CPU): (seconds, chosen C, test accuracy)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train, val, test = splits["train"], splits["val"], splits["test"]
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        clf = LogisticRegression(solver="lbfgs", warm_start=True)
        best_score, best_C = 0.0, None
        for C in parity_cs(-6, 5, 45):
            clf.set_params(C=C)
            clf.fit(train.x, train.y)
            score = 100.0 * clf.score(val.x, val.y)
            if score > best_score:
                best_score, best_C = score, C
            print(f"    seed-style C={C:.3g}: {time.perf_counter() - start:.1f} s so far", flush=True)
        clf.set_params(C=best_C)
        clf.fit(np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y]))
        seconds = time.perf_counter() - start
    return seconds, best_C, float((clf.predict(test.x) == test.y).mean())


def bench(name: str, splits: dict[str, Split], device: torch.device, rate: float, args,
          extraction: HamFeatures | None = None) -> dict:
    n_classes = 7
    train, val, test = splits["train"], splits["val"], splits["test"]
    n, d = train.x.shape
    options = dict(LINEAR_DEFAULTS)

    def converged():
        return linear_probe(train, val, test, n_classes, options, "balanced_accuracy", device)
    with EvaluationCounter() as counter:
        seconds, (resolved, extra, proba, _) = _timed(converged, device)
    iterations = sum(point["n_iter"] for point in extra["val_curve"]) + resolved["n_iter"]
    accuracy = float((proba.argmax(1) == test.y).mean())
    xt = torch.as_tensor(train.x, device=device)
    yt = torch.as_tensor(train.y, device=device)
    setup, problem = _timed(lambda: LogisticProblem(xt, yt, n_classes), device)
    one_c, fit = _timed(lambda: problem.fit(resolved["C"], tol=options["tol"]), device)
    one_c += setup
    flop_bound = counter.count * 4.0 * n * d * n_classes / rate
    row = {"problem": name, "N x D": f"{n} x {d}", "ours s": seconds, "iters": iterations,
           "unconverged": len(resolved["unconverged_C"]), "one C s": one_c, "FLOP bound s": flop_bound,
           "C ours": resolved["C"], "acc ours": accuracy}
    print(f"  converged protocol: {seconds:.2f} s, {iterations} iterations, {counter.count} evaluations, "
          f"{len(resolved['unconverged_C'])} unconverged, C={resolved['C']:.3g}, test accuracy {accuracy:.4f}; "
          f"one C (cold, C={resolved['C']:.3g}): {one_c:.3f} s ({fit.n_iter} iterations, "
          f"{setup:.3f} s of it whitening the features); "
          f"FLOP bound of those evaluations: {flop_bound:.3f} s", flush=True)
    if device.type == "cuda" and lbfgs.USE_CUDA_GRAPHS and not args.skip_eager:
        lbfgs.USE_CUDA_GRAPHS = False
        try:
            eager_s, (eager_resolved, _, eager_proba, _) = _timed(converged, device)
        finally:
            lbfgs.USE_CUDA_GRAPHS = True
        gap = float(np.abs(eager_proba - proba).max())
        row.update({"eager s": eager_s, "graph vs eager max|dp|": gap})
        print(f"  the same without CUDA graphs: {eager_s:.2f} s ({eager_s / seconds:.1f}x), C={eager_resolved['C']:.3g}, "
              f"max |test probability difference| {gap:.2g}", flush=True)
    if not args.skip_parity:
        seconds, (resolved, _, proba, _) = _timed(
            lambda: linear_probe(train, val, test, n_classes, dict(options, protocol="parity"), "accuracy", device),
            device)
        row.update({"parity s": seconds, "C parity": resolved["C"],
                    "acc parity": float((proba.argmax(1) == test.y).mean())})
        print(f"  parity protocol: {seconds:.2f} s, C={resolved['C']:.3g}, test accuracy {row['acc parity']:.4f}",
              flush=True)
    if not args.skip_seed_style:
        seconds, best_C, acc = seed_style(splits, args.cpu_threads)
        row.update({"seed-style s": seconds, "C seed": best_C, "acc seed": acc, "seed / ours": seconds / row["ours s"]})
        print(f"  seed-style (scikit-learn {__import__('sklearn').__version__}, CPU): {seconds:.2f} s, C={best_C:.3g}, "
              f"test accuracy {acc:.4f}; {row['seed / ours']:.1f}x our time", flush=True)
        if extraction is not None and not extraction.cache_hit:
            seed_pass = seed_style_extraction(extraction.context, device, args.workers)
            ours_total, seed_total = extraction.seconds + row["ours s"], 2 * seed_pass + seconds
            row.update({"end to end ours s": ours_total, "end to end seed s": seed_total,
                        "end to end ratio": seed_total / ours_total})
            print(f"  end to end: ours {ours_total:.2f} s (cold extraction {extraction.seconds:.2f} s + solver), "
                  f"seed-style {seed_total:.1f} s (extraction 2 x {seed_pass:.1f} s + loop): "
                  f"{seed_total / ours_total:.1f}x", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dims", type=int, nargs="*", default=[512, 2048], help="synthetic feature dimensions")
    parser.add_argument("--root", type=Path, help="HAM10000 folder: adds real resnet18/50-random features")
    parser.add_argument("--encoders", nargs="+", default=["resnet18-random", "resnet50-random"])
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: the harness's)")
    parser.add_argument("--image-size", type=int, default=None, help="encoder input size override (CPU checks)")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-seed-style", action="store_true", help="skip the (slow on CPU) scikit-learn loop")
    parser.add_argument("--cpu-threads", type=int, default=None, help="threads for scikit-learn (default: all)")
    parser.add_argument("--cold", action="store_true",
                        help="extract HAM10000 features into an empty cache (after a warm-up): end-to-end ratio")
    parser.add_argument("--skip-eager", action="store_true", help="on CUDA, skip the run without CUDA graphs")
    parser.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)),
                        help="DataLoader workers of the seed-style extraction (end to end, with --root)")
    args = parser.parse_args()
    if args.cold and not args.root:
        parser.error("--cold times HAM10000's extraction: give the folder with --root DIR")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    device = torch.device(args.device)
    rate = matmul_rate(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"float64 matmul {rate / 1e9:.0f} GFLOP/s", flush=True)
    warm = synthetic(16, seed=1)  # first CUDA solver call pays library initialisation
    linear_probe(warm["train"], warm["val"], warm["test"], 7, dict(LINEAR_DEFAULTS, wd_steps=3), "accuracy", device)
    rows = []
    for dim in args.dims:
        print(f"synthetic HAM10000 shape, D={dim}", flush=True)
        rows.append(bench(f"synthetic D={dim}", synthetic(dim), device, rate, args))
    if args.root:
        for encoder in args.encoders:
            print(f"HAM10000 {encoder}", flush=True)
            cache = args.cache_dir
            if args.cold:  # a warm-up extraction (library start-up), then the timed one, each into an empty cache
                ham_features(args.root, encoder, device, Path(tempfile.mkdtemp(prefix="lps-warm-")), args.image_size)
                cache = Path(tempfile.mkdtemp(prefix="lps-cold-"))
            features = ham_features(args.root, encoder, device, cache, args.image_size)
            rows.append(bench(f"HAM10000 {encoder}", features.splits, device, rate, args, features))
    from tabulate import tabulate
    print()
    print(f"linear probe, 45 C values, {name}:")
    print(tabulate([{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows],
                   headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
