"""The evaluator contract and the context an evaluator runs in.

An evaluator is an :class:`EvaluatorSpec`: protocol defaults, named presets, and
``run(context, options) -> EvalOutput``. The :class:`EvalContext` hands it the encoder (built
lazily), the dataset, its leak-free splits and cached features per split, so an evaluator never
touches files, caches or records itself.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmark.features import Features, extract_features, extraction_facts
from benchmark.predictions import Predictions
from benchmark.options import Check, Rule, check_schema_covers, validate_options
from datasets.base import ImageDataset
from datasets.splits import SplitAssignment
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions

ENCODER_CACHE_BYTES = 1 << 30  # weights of built encoders a run keeps (e.g. 20 ResNet-18s or 10 ResNet-50s)


def _weight_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules`` together."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)

log = logging.getLogger(__name__)


@dataclass
class EvalOutput:
    """What an evaluator returns; the runner turns it into a :class:`ResultRecord`.

    ``metrics``: name -> {"value", "ci", ...}; ``resolved``: protocol facts decided at run time
    (chosen C, episodes actually run); ``cost``: {"images_per_second", "seconds"}; ``predictions``:
    the per-item test outcomes behind the primary metric (:mod:`benchmark.predictions`), which the
    runner writes into the record's side file so records can be paired (``cli.py compare``).
    """

    metrics: dict[str, dict[str, Any]]
    primary_metric: str
    subgroups: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    predictions: Predictions | None = None


@dataclass
class EvaluatorSpec:
    """Registry entry for an evaluator or probe.

    ``option_schema`` declares every option of ``defaults`` (type, range, choices: see
    :mod:`benchmark.options`) and ``option_rules`` the checks that tie options together;
    :meth:`resolve_options` validates with them before any compute. A spec without a schema
    (a plugin that declares nothing) gets its options as given (JSON-parsed from ``-o``).
    """

    name: str
    run: Callable[["EvalContext", dict], EvalOutput]
    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    benchmark_preset: str | None = None  # preset used by `cli.py benchmark`; None = not in the main job
    order: int = 100  # position in the main job and the leaderboard
    aliases: tuple[str, ...] = ()
    kind: str = "evaluator"  # evaluator | probe
    multilabel: bool = False  # True: also runs on multi-label datasets (features.y / dataset.targets a 0/1 [N, L] matrix)
    option_schema: dict[str, Check] | None = None  # None: options are not validated
    option_rules: tuple[Rule, ...] = ()  # options -> message naming the options, or None

    def __post_init__(self) -> None:
        if self.option_schema is not None:  # a declaration error surfaces at registration, not in a run
            check_schema_covers(self.name, self.defaults, self.option_schema)
            for preset, values in self.presets.items():
                if set(values) - set(self.defaults):
                    raise TypeError(f"{self.name}: preset '{preset}' sets undeclared options {sorted(set(values) - set(self.defaults))}")
            for preset in [None, *self.presets]:
                self.resolve_options(preset)

    def resolve_options(self, preset: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the preset, then explicit overrides (unknown keys are an error), validated
        and normalised by ``option_schema``; raises ``OptionError`` (a ``ValueError``) with one line."""
        options = copy.deepcopy(self.defaults)
        if preset:
            if preset not in self.presets:
                raise ValueError(f"evaluator '{self.name}' has no preset '{preset}'; presets: {sorted(self.presets)}")
            options.update(copy.deepcopy(self.presets[preset]))
        for key, value in (overrides or {}).items():
            if key not in options:
                raise ValueError(f"evaluator '{self.name}' has no option '{key}'; options: {sorted(options)}")
            options[key] = value
        if self.option_schema is None:
            return options
        return validate_options(self.name, options, self.option_schema, self.option_rules)


def refuse_multilabel(spec: EvaluatorSpec, dataset: ImageDataset, supported: list[str]) -> None:
    """Raise a one-line ValueError, before any compute, when ``dataset`` is multi-label and ``spec`` cannot be."""
    if dataset.is_multilabel and not spec.multilabel:
        raise ValueError(f"{spec.kind} '{spec.name}' needs one class per image and '{dataset.name}' is multi-label "
                         f"({len(dataset.classes)} findings); use {', '.join(supported)}, or pick one finding as a "
                         f"binary task with --dataset-option task=<finding>")


def validate_evaluator_spec(obj: object) -> None:
    if not isinstance(obj, EvaluatorSpec):
        raise TypeError(f"an evaluator registration must be an EvaluatorSpec, got {type(obj).__name__}")


@dataclass
class ExtractionSettings:
    device: torch.device
    cache_dir: Path | None
    batch_size: int = 64
    num_workers: int | None = None
    image_size: int | None = None  # override of the encoder's input resolution (recorded)
    decode: str = "auto"  # image decoding: auto (nvjpeg on CUDA), pil, nvjpeg (benchmark.image_batches)
    compile: bool = False  # torch.compile the encoder for feature extraction


class EvalContext:
    """Everything an evaluator may use for one (encoder, dataset) cell."""

    def __init__(self, encoder_spec: EncoderSpec, load_options: LoadOptions, dataset: ImageDataset,
                 splits: SplitAssignment, extraction: ExtractionSettings, artifacts_dir: Path, seed: int = 0,
                 encoder_cache: dict[str, Encoder] | None = None, progress: Callable[[str, int], Any] | None = None):
        self.encoder_spec = encoder_spec
        self.load_options = load_options
        self.dataset = dataset
        self.splits = splits
        self.extraction = extraction
        self.artifacts_dir = Path(artifacts_dir)
        self.seed = seed
        self.progress = progress
        self._encoders = encoder_cache if encoder_cache is not None else {}
        self._features: Features | None = None

    @property
    def device(self) -> torch.device:
        return self.extraction.device

    def encoder(self) -> Encoder:
        """The encoder, built once per run (with the resolution override applied).

        Built encoders stay in the run's cache, least recently used first out, while they hold at
        most ``ENCODER_CACHE_BYTES`` of weights together (the newest always stays): grids run
        evaluator-major, so each cell asks for another encoder than the one before, and building
        one (random init or reading a checkpoint, then fingerprinting the weights) took 0.16-0.40 s
        on the 2-core CPU, 36 times per main job.
        """
        key = self.encoder_spec.name
        encoder = self._encoders.pop(key, None)
        built = encoder is None
        if built:
            encoder = self.encoder_spec.build(self.load_options)
            if self.extraction.image_size:
                encoder.preprocessing = encoder.preprocessing.with_input_size(self.extraction.image_size)
        self._encoders[key] = encoder  # (re)inserted last: the most recently used
        cached = self._encoders
        while built and len(cached) > 1 and _weight_bytes(*cached.values()) > ENCODER_CACHE_BYTES:
            del cached[next(iter(cached))]  # the least recently used
        return encoder

    def fresh_encoder(self) -> Encoder:
        """A new copy of the encoder for evaluators that change its weights (fine-tuning)."""
        return copy.deepcopy(self.encoder())

    def indices(self, split: str) -> np.ndarray:
        return self.splits.indices(split)

    def all_features(self) -> Features:
        """Features of every image of the dataset (extracted once, cached on disk)."""
        if self._features is None:
            encoder = self.encoder()
            callback = None
            if self.progress is not None:
                total = len(self.dataset)
                callback = self.progress(f"features {encoder.name} on {self.dataset.name}", total)
            self._features = extract_features(
                encoder, self.dataset, device=self.device, batch_size=self.extraction.batch_size,
                num_workers=self.extraction.num_workers, cache_dir=self.extraction.cache_dir, progress=callback,
                decode=self.extraction.decode, compile=self.extraction.compile)
        return self._features

    def features(self, split: str) -> Features:
        """Cached features of one split ("train", "val", "test")."""
        return self.all_features().select(self.indices(split))

    def feature_cost(self) -> dict[str, float]:
        meta = self.all_features().meta
        return {"images_per_second": float(meta.get("images_per_second", float("nan"))),
                "extraction_seconds": float(meta.get("seconds", float("nan"))),
                "extraction_cache_hit": bool(meta.get("cache_hit", False))}

    def extraction_provenance(self) -> dict | None:
        """How this cell's features were made (decode path, precision, compile...), None when it extracted none."""
        return extraction_facts(self._features.meta) if self._features is not None else None

    def primary_metric(self, default: str = "balanced_accuracy") -> str:
        """The dataset's headline metric (e.g. AUROC for binary melanoma tasks)."""
        return self.dataset.info.get("primary_metric", default)
