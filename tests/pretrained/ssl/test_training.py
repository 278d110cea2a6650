"""The pretraining loop on a tiny CNN and a small synthderm: loss goes down, a killed run resumes exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.registry import DATASETS
from pretrained.ssl.data import batch_plan
from pretrained.ssl.trainer import PretrainConfig, PretrainData, StaleStateError, pretrain

CPU = torch.device("cpu")


def _config(**overrides) -> PretrainConfig:
    base = dict(method="simclr", dataset="synthderm-mini", init="tiny-cnn", epochs=3, image_size=24, batch_size=32,
                lr=3e-3, projection_dim=16, decode_size=28)
    return PretrainConfig(**{**base, **overrides})


def _data(n: int | None = None) -> PretrainData:
    dataset = DATASETS.get("synthderm-mini").build(None, {})
    indices = np.arange(len(dataset) if n is None else n)
    return PretrainData(dataset, indices, "test-split", "test")


class Killed(RuntimeError):
    pass


def test_a_tiny_run_lowers_the_loss(tiny_encoder, mini_synthderm, tmp_path):
    result = pretrain(_config(epochs=4), _data(96), tmp_path / "run", device=CPU)
    assert len(result.losses) == 4
    assert result.losses[-1] < result.losses[0] - 0.05
    assert result.provenance["final_loss"] == result.losses[-1]
    assert result.provenance["init"] == "tiny-cnn" and result.provenance["method"] == "simclr"
    init_sha = result.provenance["init_weights_sha256"]
    assert result.encoder.provenance["weights_sha256"] not in (None, init_sha)  # never mistaken for the init
    features = result.encoder(torch.rand(2, 3, 24, 24))
    assert features.shape == (2, 16) and torch.isfinite(features).all()


def test_a_killed_run_resumes_from_its_last_epoch_and_ends_equal(tiny_encoder, mini_synthderm, tmp_path):
    config, data = _config(epochs=3), _data(64)
    straight = pretrain(config, data, tmp_path / "straight", device=CPU)

    def kill_after_first_epoch(epoch: int, loss: float) -> None:
        if epoch == 1:
            raise Killed("simulated kill")
    with pytest.raises(Killed):
        pretrain(config, data, tmp_path / "killed", device=CPU, on_epoch_end=kill_after_first_epoch)
    seen = []
    resumed = pretrain(config, data, tmp_path / "killed", device=CPU, on_epoch_end=lambda e, l: seen.append(e))
    assert resumed.start_epoch == 1 and seen == [2, 3]
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6)
    for key, value in straight.encoder.state_dict().items():
        assert torch.allclose(value, resumed.encoder.state_dict()[key], atol=1e-6), key
    # a finished run is idempotent; another configuration in the same folder is refused
    again = pretrain(config, data, tmp_path / "killed", device=CPU, on_epoch_end=lambda e, l: seen.append(e))
    assert again.start_epoch == 3 and seen == [2, 3]
    with pytest.raises(StaleStateError, match="different configuration"):
        pretrain(_config(epochs=3, lr=1e-3), data, tmp_path / "killed", device=CPU)


def test_the_last_partial_batch_is_trained_on(tiny_encoder, mini_synthderm, tmp_path):
    data = _data(37)  # batches of 16, 16 and 5
    assert [len(b) for b in batch_plan(np.arange(37), 16)] == [16, 16, 5]
    result = pretrain(_config(epochs=1, batch_size=16), data, tmp_path / "partial", device=CPU)
    assert result.provenance["steps"] == 3 and np.isfinite(result.losses[0])
    # 19 images at batch 18 leave one image: it joins the batch before (one image has no negatives)
    result = pretrain(_config(epochs=1, batch_size=18), _data(19), tmp_path / "tail", device=CPU)
    assert result.provenance["steps"] == 1


def test_supcon_with_balanced_batches_runs(tiny_encoder, mini_synthderm, tmp_path):
    result = pretrain(_config(method="supcon", epochs=1, balanced=True), _data(48), tmp_path / "supcon", device=CPU)
    assert result.provenance["method"] == "supcon" and result.provenance["balanced"]
    assert result.provenance["temperature"] == 0.1 and np.isfinite(result.losses[0])


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="method"):
        _config(method="byol")
    with pytest.raises(ValueError, match="test labels"):
        _config(method="supcon", split="all")
    with pytest.raises(ValueError, match="epochs"):
        _config(epochs=0)
