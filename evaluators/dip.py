"""``dip``: deep-image-prior feature inversion, scored by SSIM / PSNR (and LPIPS when available).

For each image a fresh skip generator (:mod:`evaluators.dip_generator`) fed fixed seeded noise
``U(0, 1) * 0.1`` of shape [1, 32, P, P] (P = the input size rounded up to a multiple of 64: 256 for
224, as ANTON) is optimised with Adam (lr 1e-3) so that ``encoder.feature_map`` of its output
(top-left ``S x S`` crop) matches that of the image (MSE). The encoder is frozen in eval mode.

Input convention: our encoders own their preprocessing, so the generator output (an image in
[0, 1] units) goes through ``encoder.preprocessing.normalize`` before the encoder, exactly like the
target image (``normalize_input: true``). ANTON feeds both raw [0, 1] tensors to every model
(trained on normalised input); ``--preset parity`` (``normalize_input: false``) does the same.

Scores: the reconstruction clipped to [0, 1] against the image at the encoder's input size: SSIM
(primary) and PSNR always; LPIPS (alex, vgg, squeeze) only when the ``lpips`` package and its
backbone weights are on disk, otherwise the record says ``lpips_<net>: unavailable (<reason>)``.
Means over images with 95 % t-intervals; the reconstructions are saved as PNG.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.intervals import mean_metric
from benchmark.options import Bool, Choice, Float, Int, ListOf, same_length
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.dip_generator import DIP_CHANNELS, DIP_FILTERS, DIP_INPUT_CHANNELS, DIP_SKIP, SkipGenerator, noise_side
from evaluators.image_quality import LPIPS_BACKBONE_WEIGHTS, LPIPSScorer, psnr, ssim
from evaluators.probe_common import PROBE_SPLITS, frozen, sample_rows
from evaluators.registry import EVALUATORS
from pretrained.encoder import Encoder

log = logging.getLogger(__name__)

DIP_DEFAULTS = {
    "iterations": 3000,  # ANTON runs (runner_script.sh); the script's default was 1000
    "lr": 1e-3,
    "num_images": 5,
    "split": "test",
    "noise_scale": 0.1,
    "input_channels": DIP_INPUT_CHANNELS,  # generator: PROTOCOLS.md section 4 (DIP "skip" as ANTON)
    "generator_channels": list(DIP_CHANNELS),
    "generator_skip": list(DIP_SKIP),
    "generator_filters": list(DIP_FILTERS),
    "image_size": None,  # None: the encoder's input size; an int reconstructs at that size instead
    "normalize_input": True,  # generator output through encoder.preprocessing.normalize (ANTON: false)
    "lpips_nets": ["alex", "vgg", "squeeze"],
    "log_every": 50,  # loss-curve resolution (iterations)
    "save_images": True,
}
DIP_SCHEMA = {
    "iterations": Int(min=1), "lr": Float(min=0, min_open=True), "num_images": Int(min=1, nullable=True),
    "split": Choice(*PROBE_SPLITS), "noise_scale": Float(min=0), "input_channels": Int(min=1),
    "generator_channels": ListOf(Int(min=1)), "generator_skip": ListOf(Int(min=0)), "generator_filters": ListOf(Int(min=1)),
    "image_size": Int(min=16, nullable=True), "normalize_input": Bool(),
    "lpips_nets": ListOf(Choice(*LPIPS_BACKBONE_WEIGHTS), min_len=0, unique=True), "log_every": Int(min=1),
    "save_images": Bool(),
}

DIP_PRESETS = {
    "parity": {"normalize_input": False},
    # CPU smoke preset: 64 px, a 4-scale 3x3 generator, lr 1e-2 (about 25x cheaper per step than parity at 128 px)
    "quick": {"iterations": 100, "num_images": 1, "log_every": 20, "image_size": 64, "lr": 1e-2,
              "generator_channels": [16, 32, 64, 64], "generator_skip": [4, 4, 4, 4], "generator_filters": [3, 3, 3, 3]},
}


@dataclass
class Inversion:
    """One reconstruction: image [3, S, S] in [0, 1] (clipped, CPU) and the loss curve [(iteration, mse)]."""

    image: torch.Tensor
    curve: list[tuple[int, float]]
    final_loss: float
    seconds: float


def invert_features(encoder: Encoder, target_image: torch.Tensor, iterations: int, lr: float = 1e-3, seed: int = 0,
                    noise_scale: float = 0.1, normalize_input: bool = True, log_every: int = 50,
                    generator: dict | None = None) -> Inversion:
    """Deep-image-prior inversion of ``encoder.feature_map`` for one image.

    Args:
        encoder: frozen (eval mode, no parameter gradients), on the target's device.
        target_image: [3, S, S] in [0, 1] units (``preprocessing.to_unit_tensor``).
        iterations: Adam steps.
        seed: seeds the generator's initialisation and its noise input.
        normalize_input: pass generator output and target through ``encoder.preprocessing.normalize``.
        generator: :class:`SkipGenerator` keyword arguments (default: the seed study's configuration).
    Returns:
        the reconstruction after the last step, the loss curve (every ``log_every`` steps and the
        last one) and the loss of the returned reconstruction.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    preprocessing = encoder.preprocessing
    if normalize_input and preprocessing.histogram_normalize:
        raise ValueError(f"encoder '{encoder.name}' uses histogram normalisation, which is not differentiable; "
                         f"run dip with -o normalize_input=false (raw [0, 1] input, as ANTON)")
    device = target_image.device
    size = target_image.shape[-1]
    prepare = preprocessing.normalize if normalize_input else (lambda t: t)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: leaves CUDA RNG untouched
        net = SkipGenerator(**(generator or {}))
        side = noise_side(size, net.scales)
        noise = torch.rand(1, net.in_channels, side, side) * noise_scale
    generator = net.to(device).train()
    noise = noise.to(device)
    with torch.no_grad():
        target = encoder.feature_map(prepare(target_image.unsqueeze(0)))
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    for step in range(iterations):
        output = generator(noise)[..., :size, :size]
        loss = F.mse_loss(encoder.feature_map(prepare(output)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0:
            curve.append((step, float(loss.detach())))
    with torch.no_grad():
        output = generator(noise)[..., :size, :size]
        final = float(F.mse_loss(encoder.feature_map(prepare(output)), target))
    curve.append((iterations, final))
    return Inversion(output[0].clamp(0.0, 1.0).cpu(), curve, final, time.perf_counter() - start)


def run_dip(context: EvalContext, options: dict) -> EvalOutput:
    encoder = context.encoder()
    device = context.device
    rows = sample_rows(context, options["split"], options["num_images"], context.seed)
    iterations = int(options["iterations"])
    preprocessing = encoder.preprocessing
    if options["image_size"]:
        preprocessing = preprocessing.with_input_size(int(options["image_size"]))
    generator = {"in_channels": int(options["input_channels"]), "channels": list(options["generator_channels"]),
                 "skip": list(options["generator_skip"]), "filters": list(options["generator_filters"])}
    scales = SkipGenerator(**generator).scales
    scorer = LPIPSScorer(list(options["lpips_nets"]), device)
    originals, reconstructions, inversions = [], [], []
    progress = context.progress(f"dip {encoder.name}", len(rows)) if context.progress else None
    encoder.to(device)
    start = time.perf_counter()
    with frozen(encoder):
        for position, row in enumerate(rows):
            unit = preprocessing.to_unit_tensor(context.dataset.load_image(int(row))).to(device)
            inversion = invert_features(encoder, unit, iterations, float(options["lr"]), seed=context.seed + position,
                                        noise_scale=float(options["noise_scale"]),
                                        normalize_input=bool(options["normalize_input"]), log_every=int(options["log_every"]),
                                        generator=generator)
            originals.append(unit.cpu())
            reconstructions.append(inversion.image)
            inversions.append(inversion)
            if progress is not None:
                progress(1)
    seconds = time.perf_counter() - start
    a, b = torch.stack(originals), torch.stack(reconstructions)
    metrics = {"ssim": mean_metric(ssim(b, a).numpy()), "psnr": mean_metric(psnr(b, a).numpy(), unit="dB"),
               "feature_loss": mean_metric([inv.final_loss for inv in inversions]),
               "feature_loss_initial": mean_metric([inv.curve[0][1] for inv in inversions])}
    lpips_values = scorer(b, a)
    for net, values in lpips_values.items():
        metrics[f"lpips_{net}"] = mean_metric(values.numpy())
    if len(lpips_values) > 1:  # ANTON's "average" column: mean of the backbones, per image
        metrics["lpips_average"] = mean_metric(torch.stack(list(lpips_values.values())).mean(0).numpy())
    ids = context.dataset.ids[rows].tolist()
    extra = {"detail_metrics": list(metrics), "loss_curves": {i: inv.curve for i, inv in zip(ids, inversions)},
             "notes": list(scorer.notes.values()),
             "lpips": {n: ("available" if f"lpips_{n}" in metrics else scorer.notes.get(n, "")) for n in options["lpips_nets"]},
             "encoder_facts": {"input_size": int(a.shape[-1]), "noise_side": noise_side(int(a.shape[-1]), scales),
                               "preprocessing": preprocessing.to_dict(),
                               "feature_map_shape": _feature_shape(encoder, a[:1].to(device))}}
    if options["save_images"]:
        extra["figures"] = _save_images(context, ids, a, b)
    return EvalOutput(
        metrics=metrics, primary_metric="ssim",
        resolved={"n_images": int(len(rows)), "image_ids": ids, "iterations": iterations, "generator": generator,
                  "ci": "95% Student-t over images"},
        extra=extra,
        cost={"images_per_second": len(rows) / max(seconds, 1e-9), "seconds": seconds,
              "iterations_per_second": len(rows) * iterations / max(seconds, 1e-9)})


@torch.no_grad()
def _feature_shape(encoder: Encoder, x: torch.Tensor) -> list[int]:
    was_training = encoder.training
    encoder.eval()
    shape = list(encoder.feature_map(encoder.preprocessing.normalize(x)).shape[1:])
    encoder.train(was_training)
    return shape


def _save_images(context: EvalContext, ids: list[str], originals: torch.Tensor, reconstructions: torch.Tensor) -> list[str]:
    from evaluators.probe_figures import save_png, save_reconstruction_grid
    out = context.artifacts_dir
    paths = [str(save_png(r.permute(1, 2, 0).numpy(), out / f"{i}_reconstruction.png"))
             for i, r in zip(ids, reconstructions)]
    grid = save_reconstruction_grid(originals.permute(0, 2, 3, 1).numpy(), reconstructions.permute(0, 2, 3, 1).numpy(),
                                    [f"reconstruction {i}" for i in ids], out / "dip_grid.png",
                                    f"{context.encoder_spec.name}: deep-image-prior inversion of feature_map")
    return [str(grid)] + paths


EVALUATORS.add("dip", EvaluatorSpec(
    name="dip", run=run_dip, defaults=DIP_DEFAULTS, presets=DIP_PRESETS, option_schema=DIP_SCHEMA,
    option_rules=(same_length("generator_channels", "generator_skip", "generator_filters"),),
    description="deep-image-prior inversion of the encoder's last spatial map (skip net, Adam 1e-3); SSIM/PSNR "
                "between image and reconstruction, LPIPS when available (ANTON reconstruction.py)",
    benchmark_preset="quick", order=80, kind="probe", multilabel=True))  # label-free: multi-label datasets are fine
