"""Fine-tuning augmentation on the device: the same seeded transforms as the PIL path, on decoded tensors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators.augment import AugmentedImages, DeviceAugmentedImages, train_augmentation
from evaluators.finetune import FINETUNE_DEFAULTS, FINETUNE_PRESETS
from pretrained.preprocessing import Preprocessing
from tests.image_helpers import file_dataset, jpeg_bytes, lesion_like

PRE = Preprocessing(input_size=32, resize_size=36, interpolation="bicubic")


@pytest.fixture
def lesions(tmp_path):
    png = io.BytesIO()
    Image.fromarray(lesion_like(5, 120, 90)).save(png, format="PNG")
    files = {f"l{k}.jpg": jpeg_bytes(lesion_like(k, 120, 90)) for k in range(5)}
    return file_dataset(tmp_path, {**files, "p.png": png.getvalue()})


@pytest.mark.parametrize("preset", ["transfer", "skin-lesion"])
def test_device_augmentation_draws_the_same_parameters_as_the_pil_path(lesions, preset):
    options = {**FINETUNE_DEFAULTS, **FINETUNE_PRESETS[preset]}
    augment = train_augmentation(options, 32, PRE)
    rows = np.arange(len(lesions))
    reference = AugmentedImages(lesions, rows, augment, PRE, 32)
    device = DeviceAugmentedImages(lesions, rows, augment, PRE, 32, torch.device("cpu"), workers=2)
    items = [[(row, 1000 + row) for row in range(4)], [(4, 7), (5, 8), (0, 9)]]
    got = list(device.batches(items))
    assert [len(x) for x, _ in got] == [4, 3] and device.images.stats == {"nvjpeg": 6, "pil": 1}
    for (x, y), batch in zip(got, items):
        expected = torch.stack([reference[item][0] for item in batch])
        assert y.tolist() == [int(lesions.labels[row]) for row, _ in batch]
        # same crops, flips, angles and hue shifts; only the resampling kernels differ (tensor vs PIL)
        difference = (x - expected).abs().mean(dim=(1, 2, 3))
        assert difference.max() < 0.05, difference  # another seed: 0.36-0.98


def test_trainer_consumes_device_batches(lesions, tmp_path):
    from evaluators.finetune import FineTuneModel
    from evaluators.training import TrainConfig, Trainer, Validation
    from benchmark.testing import tiny_encoder_spec
    from pretrained.encoder import LoadOptions
    encoder = tiny_encoder_spec(input_size=32).build(LoadOptions())
    augment = train_augmentation(FINETUNE_DEFAULTS, 32, encoder.preprocessing)
    rows = np.arange(len(lesions))
    images = DeviceAugmentedImages(lesions, rows, augment, encoder.preprocessing, 32, torch.device("cpu"), workers=1)
    config = TrainConfig(steps=3, batch_size=4, lr=0.01, weight_decay=0.0, eval_every=3)
    result = Trainer(FineTuneModel(encoder, 2, seed=0), images, lesions.labels[rows],
                     lambda model: Validation(1.0, {"balanced_accuracy": 0.5}), config, tmp_path / "run",
                     torch.device("cpu"), {"test": True}).fit()
    assert result.steps_run == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_augmentation_on_cuda_matches_the_pil_path(lesions):
    options = {**FINETUNE_DEFAULTS, **FINETUNE_PRESETS["skin-lesion"]}
    augment = train_augmentation(options, 32, PRE)
    rows = np.arange(len(lesions))
    reference = AugmentedImages(lesions, rows, augment, PRE, 32)
    device = DeviceAugmentedImages(lesions, rows, augment, PRE, 32, torch.device("cuda"), workers=2)
    items = [[(row, 50 + row) for row in rows]]
    x, _ = next(device.batches(items))
    assert x.device.type == "cuda" and device.images.stats == {"nvjpeg": 5, "pil": 1}
    expected = torch.stack([reference[item][0] for item in items[0]])
    assert (x.cpu() - expected).abs().mean(dim=(1, 2, 3)).max() < 0.05
