"""Where an encoder's checkpoint file comes from: file name, format, URL, expected sha256.

An encoder lists one or more :class:`WeightsSource` in order of preference (e.g. BYOL: the
converted ``pretrain_res50x1.pth.tar``, else DeepMind's original pickle). Files are located in
the weights folders (``--weights-dir``, ``$MEDTRANSFER_WEIGHTS``, ``~/.cache/medtransfer/weights``);
``cli.py weights`` lists them and ``cli.py weights download NAME`` fetches the first one with a URL.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pretrained.checkpoints import MissingWeightsError, locate, weight_search_dirs
from pretrained.encoder import LoadOptions, WeightsStatus


@dataclass(frozen=True)
class WeightsSource:
    """One checkpoint file an encoder can be built from.

    Attributes:
        filename: expected file name in a weights folder (or an absolute path for local encoders).
        format: key of :data:`pretrained.formats.FORMATS` (or "torchvision" / "local").
        url: direct download URL, when there is one.
        sha256: expected sha256 (full, or the prefix upstream publishes), when known.
        how_to_get: instructions when there is no direct URL (converters, manual steps).
        url_verified: whether the URL was checked to serve the file (False: copied from upstream docs).
    """

    filename: str
    format: str
    url: str | None = None
    sha256: str | None = None
    how_to_get: str = ""
    url_verified: bool = False

    def where_to_get(self) -> str:
        parts = []
        if self.url:
            parts.append(self.url + ("" if self.url_verified else " (URL from upstream docs, not verified)"))
        if self.how_to_get:
            parts.append(self.how_to_get)
        return "; ".join(parts) or "no public source known"

    def to_dict(self) -> dict:
        return asdict(self)


def search_dirs(options: LoadOptions, extra: tuple[Path, ...] = ()) -> list[Path]:
    return [*weight_search_dirs(options.weights_dir), *extra]


def locate_source(source: WeightsSource, dirs: list[Path]) -> Path | None:
    """The file of ``source`` in ``dirs`` (absolute file names are used as they are)."""
    path = Path(source.filename).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    return locate(source.filename, dirs)


def find_first(sources: tuple[WeightsSource, ...], dirs: list[Path]) -> tuple[WeightsSource, Path] | None:
    for source in sources:
        path = locate_source(source, dirs)
        if path is not None:
            return source, path
    return None


def how_to_get(sources: tuple[WeightsSource, ...], encoder: str = "ENCODER") -> str:
    lines = [f"  - {s.filename}: {s.where_to_get()}" for s in sources]
    download = f" (or run `python cli.py weights download {encoder}`)" if any(s.url for s in sources) else ""
    which = "one of these files" if len(sources) > 1 else "this file"
    return f"Put {which} in a weights folder{download}:\n" + "\n".join(lines)


def require_first(sources: tuple[WeightsSource, ...], dirs: list[Path], encoder: str = "ENCODER"
                  ) -> tuple[WeightsSource, Path]:
    found = find_first(sources, dirs)
    if found is None:
        names = " or ".join(s.filename for s in sources)
        raise MissingWeightsError(names, dirs, how_to_get(sources, encoder))
    return found


def sources_status(sources: tuple[WeightsSource, ...], options: LoadOptions, *, encoder: str = "ENCODER",
                   extra_dirs: tuple[Path, ...] = ()) -> WeightsStatus:
    """Present or not, without reading the file (fast, for ``cli.py models``)."""
    dirs = search_dirs(options, extra_dirs)
    found = find_first(sources, dirs)
    if found is None:
        return WeightsStatus(False, "missing " + " or ".join(s.filename for s in sources),
                             how_to_get=how_to_get(sources, encoder))
    source, path = found
    return WeightsStatus(True, str(path), str(path))
