"""Image batches: JPEG sniffing, the PIL and tensor-decode paths, the decoded-image cache, the worker start method."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.decoded_cache import HEADER_BYTES, decoded_key, decoded_path
from benchmark.features import extract_features
from benchmark.image_batches import ImageBatches, resolve_decode, takes_files_as_images, wait_for_decoded_writes
from benchmark.jpeg import gpu_decodable
from benchmark.testing import tiny_encoder_spec
from benchmark.workers import START_METHOD, data_loader
from datasets.base import ArrayImageDataset, FileImageDataset, UnreadableImageError
from pretrained.encoder import LoadOptions
from pretrained.preprocessing import Preprocessing
from tests.image_helpers import collect, file_dataset, jpeg_bytes, lesion_like

PRE = Preprocessing(input_size=24, resize_size=28, interpolation="bicubic")


# -- JPEG sniffing ------------------------------------------------------------------------------
def test_gpu_decodable_takes_plain_jpegs_and_leaves_the_rest_to_pil():
    colour = lesion_like(0)
    assert gpu_decodable(jpeg_bytes(colour), None).__dict__ == {"width": 60, "height": 45, "channels": 3}
    assert gpu_decodable(jpeg_bytes(colour[..., 0]), None).channels == 1
    assert gpu_decodable(jpeg_bytes(colour, progressive=True), None) is not None
    assert gpu_decodable(jpeg_bytes(colour) + b"\0" * 10, None) is not None  # trailing padding is fine
    assert gpu_decodable(jpeg_bytes(colour), max_pixels=100) is None  # decompression bomb: PIL's error
    assert gpu_decodable(jpeg_bytes(colour)[:-300], None) is None  # truncated: PIL's error
    cmyk = io.BytesIO()
    Image.fromarray(colour).convert("CMYK").save(cmyk, format="JPEG")
    assert gpu_decodable(cmyk.getvalue(), None) is None
    png = io.BytesIO()
    Image.fromarray(colour).save(png, format="PNG")
    assert gpu_decodable(png.getvalue(), None) is None
    assert gpu_decodable(b"", None) is None and gpu_decodable(b"\xff\xd8\xff\xd9", None) is None


# -- the two decode paths -----------------------------------------------------------------------
def test_pil_path_is_the_reference_pipeline_exactly_with_or_without_threads(tmp_path):
    dataset = file_dataset(tmp_path, {f"i{k}.jpg": jpeg_bytes(lesion_like(k)) for k in range(7)})
    expected = torch.stack([PRE.crop_uint8(dataset.load_image(k)) for k in range(7)])
    for workers in (0, 1, 2):  # in the caller's thread, in a thread, in worker processes
        batches = ImageBatches(dataset, np.arange(7), PRE, device=torch.device("cpu"), batch_size=3, workers=workers)
        assert torch.equal(collect(batches), expected)
        assert batches.stats == {"pil": 7} and batches.cache_state == "off"
    network_input = PRE.input_from_uint8(expected)
    assert torch.equal(network_input, torch.stack([PRE(dataset.load_image(k)) for k in range(7)]))


def test_tensor_decode_path_handles_mixed_files_and_matches_pil(tmp_path):
    """The nvjpeg pipeline's logic, run on the CPU (torchvision's libjpeg decoder, tensor resize)."""
    png = io.BytesIO()
    Image.fromarray(lesion_like(9)).save(png, format="PNG")
    files = {"a.jpg": jpeg_bytes(lesion_like(1)), "grey.jpg": jpeg_bytes(lesion_like(2)[..., 1]), "b.png": png.getvalue(),
             "big.jpg": jpeg_bytes(lesion_like(3, 90, 70)), "c.jpg": jpeg_bytes(lesion_like(4))}
    dataset = file_dataset(tmp_path, files)
    assert takes_files_as_images(dataset)
    reference = torch.stack([PRE.crop_uint8(dataset.load_image(k)) for k in range(5)]).float()
    batches = ImageBatches(dataset, np.arange(5), PRE, device=torch.device("cpu"), batch_size=4, workers=2,
                           decode="nvjpeg")
    pixels = collect(batches).float()
    assert batches.stats == {"nvjpeg": 4, "pil": 1}
    assert torch.equal(pixels[2], reference[2])  # the PNG went the PIL way
    assert (pixels - reference).abs().mean() < 1.0 and (pixels - reference).abs().max() <= 24


def test_tensor_decode_path_reports_a_truncated_jpeg_like_pil(tmp_path):
    dataset = file_dataset(tmp_path, {"ok.jpg": jpeg_bytes(lesion_like(0)), "cut.jpg": jpeg_bytes(lesion_like(1))[:400]})
    batches = ImageBatches(dataset, np.arange(2), PRE, device=torch.device("cpu"), batch_size=2, workers=0,
                           decode="nvjpeg")
    with pytest.raises(UnreadableImageError, match="cut.jpg.*truncated or not an image"):
        collect(batches)


def test_array_datasets_and_custom_loaders_never_take_the_file_path():
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    table = pd.DataFrame({"image_id": ["a", "b", "c"], "label": [0, 1, 0], "group": ["a", "b", "c"]})
    assert not takes_files_as_images(ArrayImageDataset("arr", table, ["x", "y"], images))

    class Cropped(FileImageDataset):
        def _load(self, index):
            return super()._load(index).crop((0, 0, 4, 4))
    files = pd.DataFrame({"image_id": ["a"], "path": ["/nonexistent.jpg"], "label": [0], "group": ["a"]})
    assert not takes_files_as_images(Cropped("c", files, ["x"]))
    assert resolve_decode("auto", torch.device("cpu")) == "pil"
    with pytest.raises(ValueError, match="needs --device cuda"):
        resolve_decode("nvjpeg", torch.device("cpu"))


# -- the decoded-image cache --------------------------------------------------------------------
def test_decoded_cache_is_written_once_read_back_and_rebuilt_when_damaged(tmp_path):
    dataset = file_dataset(tmp_path, {f"i{k}.jpg": jpeg_bytes(lesion_like(k)) for k in range(5)})
    cache = tmp_path / "cache"

    def run(rows=np.arange(5)):
        batches = ImageBatches(dataset, rows, PRE, device=torch.device("cpu"), batch_size=2, workers=1,
                               cache_dir=cache)
        pixels = collect(batches)
        wait_for_decoded_writes()  # the file is committed in the background
        return pixels, batches
    first, batches = run()
    assert batches.cache_state == "written"
    path = decoded_path(cache, decoded_key(dataset, PRE, "pil"))
    assert path.stat().st_size == HEADER_BYTES + 5 * 3 * 24 * 24 and not list(path.parent.glob(".*.tmp"))
    again, batches = run()
    assert batches.cache_state == "hit" and batches.stats == {"cache": 5} and torch.equal(again, first)
    subset, batches = run(np.array([4, 1]))
    assert batches.cache_state == "hit" and torch.equal(subset, first[[4, 1]])
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    rebuilt, batches = run()
    assert batches.cache_state == "written" and torch.equal(rebuilt, first)
    data = bytearray(path.read_bytes())
    data[40:48] = b"XXXXXXXX"  # a foreign header
    path.write_bytes(bytes(data))
    assert run()[1].cache_state == "written"
    other = Preprocessing(input_size=24, resize_size=28, interpolation="bilinear")
    assert decoded_path(cache, decoded_key(dataset, other, "pil")) != path  # geometry is in the key
    assert decoded_path(cache, decoded_key(dataset, PRE, "nvjpeg")) != path  # and the decoder


def test_a_pass_stopped_early_leaves_no_cache_file(tmp_path):
    dataset = file_dataset(tmp_path, {f"i{k}.jpg": jpeg_bytes(lesion_like(k)) for k in range(6)})
    batches = ImageBatches(dataset, np.arange(6), PRE, device=torch.device("cpu"), batch_size=2, workers=1,
                           cache_dir=tmp_path / "cache")
    stream = iter(batches)
    next(stream)
    stream.close()  # e.g. the encoder failed on the first batch
    wait_for_decoded_writes()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_subset_without_a_cache_is_decoded_but_not_cached(tmp_path):
    dataset = file_dataset(tmp_path, {f"i{k}.jpg": jpeg_bytes(lesion_like(k)) for k in range(3)})
    batches = ImageBatches(dataset, np.array([2, 0]), PRE, device=torch.device("cpu"), batch_size=4, workers=0,
                           cache_dir=tmp_path / "cache")
    assert len(collect(batches)) == 2 and batches.cache_state == "miss"
    assert not (tmp_path / "cache").exists()


def test_features_through_the_decoded_cache_equal_the_reference_and_a_second_encoder_reads_it(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(10, 20, 20, 3), dtype=np.uint8)
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "label": np.arange(10) % 2,
                          "group": [f"g{k}" for k in range(10)]})
    dataset = ArrayImageDataset("toy", table, ["a", "b"], images)
    first, second = (tiny_encoder_spec(seed=s).build(LoadOptions()) for s in (0, 1))
    with torch.inference_mode():
        expected = first.eval()(torch.stack([first.preprocessing(dataset.load_image(i)) for i in range(10)]))
    cold = extract_features(first, dataset, cache_dir=tmp_path, batch_size=4, num_workers=1)
    warm = extract_features(second, dataset, cache_dir=tmp_path, batch_size=4, num_workers=1)
    np.testing.assert_array_equal(cold.x, expected.numpy())
    assert cold.meta["decoded_cache"] == "written" and cold.meta["images_by_source"] == {"pil": 10}
    assert warm.meta["decoded_cache"] == "hit" and warm.meta["images_by_source"] == {"cache": 10}
    assert cold.meta["decode"] == "pil" and cold.meta["precision"] == "fp32" and not cold.meta["compiled"]


# -- DataLoader workers -------------------------------------------------------------------------
class _Squares(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index * index)


def test_data_loader_workers_start_from_the_fork_server():
    loader = data_loader(_Squares(), batch_size=3, num_workers=1)
    assert loader.multiprocessing_context.get_start_method() == START_METHOD == "forkserver"
    assert torch.cat(list(loader)).tolist() == [0, 1, 4, 9, 16, 25]
    assert data_loader(_Squares(), num_workers=0).multiprocessing_context is None


def test_the_decoder_must_be_resolved_first():
    """'auto' is resolved by resolve_decode (cli, extract_features); ImageBatches refuses it rather than guess."""
    table = pd.DataFrame({"image_id": ["a"], "label": [0], "group": ["a"]})
    dataset = ArrayImageDataset("arr", table, ["x"], np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="resolve_decode"):
        ImageBatches(dataset, np.arange(1), PRE, device=torch.device("cpu"), batch_size=1, workers=0, decode="auto")
