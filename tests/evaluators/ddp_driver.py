"""Run by tests/evaluators/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Registers the test encoder and dataset, runs ``cli.py finetune`` exactly as a user would, then
extracts features (sharded over the ranks) and saves them from rank 0.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_driver.py OUT_DIR -- <finetune CLI args>
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    import numpy as np

    from benchmark import distributed
    from benchmark.features import extract_features
    from benchmark.testing import tiny_encoder_spec
    from cli import cli
    from datasets.base import DatasetSpec
    from datasets.registry import DATASETS
    from pretrained.encoder import LoadOptions
    from pretrained.registry import ENCODERS
    from tests.conftest import _mini

    out = Path(sys.argv[1])
    cli_args = sys.argv[sys.argv.index("--") + 1:]
    spec = tiny_encoder_spec()
    ENCODERS.add(spec.name, spec, origin="test")
    DATASETS.add("synthderm-mini", DatasetSpec(name="synthderm-mini", build=lambda root, options: _mini(options),
                                               needs_root=False), origin="test")
    cli.main(args=["finetune", *cli_args], standalone_mode=False)  # joins the process group
    assert distributed.world_size() == 2, "the driver must run under torchrun with 2 processes"
    features = extract_features(spec.build(LoadOptions()), _mini({}), num_workers=0, cache_dir=None)
    if distributed.is_main_process():
        np.save(out / "features.npy", features.x)
        (out / "world_size.txt").write_text(str(distributed.world_size()))


if __name__ == "__main__":
    main()
