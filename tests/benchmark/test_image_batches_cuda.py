"""The GPU image path (nvjpeg decode, GPU resize, decoded cache on CUDA, torch.compile): runs on CUDA machines only."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.features import extract_features
from benchmark.image_batches import ImageBatches, nvjpeg_available
from benchmark.testing import tiny_encoder_spec
from pretrained.encoder import LoadOptions
from pretrained.torchvision_zoo import random_encoder
from tests.image_helpers import collect, file_dataset, jpeg_bytes, lesion_like

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and nvjpeg_available()),
                                reason="needs CUDA and torchvision's nvJPEG decoder")
CUDA = torch.device("cuda")


def _cosines(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cosine, raw and after removing b's mean feature."""
    def rowwise(u, v):
        return (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    centre = b.mean(0, keepdims=True)
    return rowwise(a, b), rowwise(a - centre, b - centre)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """24 HAM10000-like JPEGs at 600x450 (quality 92)."""
    folder = tmp_path_factory.mktemp("lesions")
    return file_dataset(folder, {f"l{k:02d}.jpg": jpeg_bytes(lesion_like(k, 600, 450)) for k in range(24)})


def test_nvjpeg_features_equal_the_cpu_reference_within_tolerance(lesions, tmp_path):
    """The stated tolerance: cosine >= 0.999 per image, GPU (nvjpeg, bf16) vs CPU (PIL, fp32), ResNet-50 at 224 px."""
    encoder = random_encoder("resnet50", "resnet50", LoadOptions())
    gpu = extract_features(encoder, lesions, device=CUDA, batch_size=16, num_workers=4, cache_dir=tmp_path)
    assert gpu.meta["decode"] == "nvjpeg" and gpu.meta["images_by_source"] == {"nvjpeg": 24}
    assert gpu.meta["precision"] == "bf16-autocast" and gpu.meta["decoded_cache"] == "written"
    pil = extract_features(encoder, lesions, device=CUDA, batch_size=16, num_workers=4, decode="pil")
    cpu = extract_features(random_encoder("resnet50", "resnet50", LoadOptions()), lesions, batch_size=16,
                           num_workers=4)
    raw, centred = _cosines(gpu.x, cpu.x)
    assert raw.min() >= 0.999, raw
    assert centred.min() >= 0.9, centred
    decode_raw, _ = _cosines(gpu.x, pil.x)  # decoding alone (same device and precision)
    assert decode_raw.min() >= 0.999, decode_raw


def test_nvjpeg_pixels_are_close_to_pil_and_the_cache_round_trips(lesions, tmp_path):
    preprocessing = random_encoder("resnet18", "resnet18", LoadOptions()).preprocessing
    rows = np.arange(len(lesions))
    reference = collect(ImageBatches(lesions, rows, preprocessing, device=torch.device("cpu"), batch_size=8,
                                      workers=2)).float()
    cold = ImageBatches(lesions, rows, preprocessing, device=CUDA, batch_size=8, workers=2, decode="nvjpeg",
                        cache_dir=tmp_path)
    pixels = collect(cold)
    assert pixels.device.type == "cuda" and pixels.dtype == torch.uint8 and cold.cache_state == "written"
    difference = (pixels.cpu().float() - reference).abs()
    assert difference.mean() < 1.5, difference.mean()
    warm = ImageBatches(lesions, rows, preprocessing, device=CUDA, batch_size=8, workers=2, decode="nvjpeg",
                        cache_dir=tmp_path)
    assert torch.equal(collect(warm), pixels) and warm.cache_state == "hit"


def test_files_nvjpeg_should_not_take_go_the_pil_way_on_cuda(tmp_path):
    png, cmyk = io.BytesIO(), io.BytesIO()
    Image.fromarray(lesion_like(1)).save(png, format="PNG")
    Image.fromarray(lesion_like(2)).convert("CMYK").save(cmyk, format="JPEG")
    dataset = file_dataset(tmp_path, {"a.jpg": jpeg_bytes(lesion_like(0)), "b.png": png.getvalue(),
                                       "c.jpg": cmyk.getvalue(), "grey.jpg": jpeg_bytes(lesion_like(3)[..., 0]),
                                       "d.jpg": jpeg_bytes(lesion_like(4, 90, 70), progressive=True)})
    preprocessing = random_encoder("resnet18", "resnet18", LoadOptions()).preprocessing
    batches = ImageBatches(dataset, np.arange(5), preprocessing, device=CUDA, batch_size=5, workers=2,
                           decode="nvjpeg")
    pixels = collect(batches).cpu()
    assert batches.stats == {"nvjpeg": 3, "pil": 2}
    for row in (1, 2):  # PNG and CMYK: the reference pixels exactly
        assert torch.equal(pixels[row], preprocessing.crop_uint8(dataset.load_image(row)))
    grey = pixels[3]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_compiled_extraction_pads_the_last_batch_and_matches(lesions):
    encoder = tiny_encoder_spec(input_size=32).build(LoadOptions())
    plain = extract_features(encoder, lesions, device=CUDA, batch_size=10, num_workers=2)
    compiled = extract_features(encoder, lesions, device=CUDA, batch_size=10, num_workers=2, compile=True)
    assert compiled.meta["compiled"] and compiled.meta["compile_seconds"] > 0 and len(compiled) == 24
    raw, _ = _cosines(compiled.x, plain.x)
    assert raw.min() >= 0.999
