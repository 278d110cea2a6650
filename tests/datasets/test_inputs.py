"""Strict inputs (issue 13 part B): 16-bit and float images scaled (never clipped), decompression bombs,
hidden/non-image entries of folder datasets, missing and variant CSV labels, dataset option checks.
Every file is written by the test."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from datasets.base import ArrayImageDataset, DatasetError, UnreadableImageError, read_image
from datasets.check import check_download
from datasets.intensity import parse_window, scale_to_uint8
from datasets.registry import DATASETS


def _grey16(path, values: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"


def _rgb(path, value: int = 100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _cli(*args):
    from cli import cli
    return CliRunner().invoke(cli, list(args))


XRAY = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # a 12-bit ramp 0..4080 stored in 16 bits


def test_16bit_png_is_scaled_by_its_own_range_not_clipped(tmp_path):
    _grey16(tmp_path / "x.png", XRAY)
    assert (np.asarray(Image.open(tmp_path / "x.png").convert("RGB")) == 255).mean() > 0.9  # what PIL alone does
    image = read_image(tmp_path / "x.png")
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.dtype == np.uint8
    expected = np.rint(XRAY / 4080 * 255).astype(np.uint8)  # per-image min..max, rounded
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert (pixels[..., 0] == pixels[..., 2]).all() and (pixels == 255).mean() < 0.01
    assert len(np.unique(pixels)) == 256  # every 8-bit level used: nothing collapsed


def test_intensity_window_option_and_dtype_rule(tmp_path):
    _grey16(tmp_path / "x.png", XRAY)
    fixed = np.asarray(read_image(tmp_path / "x.png", (0, 4095)))[..., 0]
    np.testing.assert_array_equal(fixed, np.rint(XRAY / 4095 * 255).astype(np.uint8))
    narrow = np.asarray(read_image(tmp_path / "x.png", (1000, 2000)))[..., 0]  # a window saturates outside it
    assert narrow[XRAY <= 1000].max() == 0 and narrow[XRAY >= 2000].min() == 255
    whole = np.asarray(read_image(tmp_path / "x.png", "dtype"))[..., 0]
    np.testing.assert_array_equal(whole, np.rint(XRAY / 65535 * 255).astype(np.uint8))
    _rgb(tmp_path / "rgb.png", 100)  # 8-bit images are never rescaled (as the GPU JPEG decoder, which skips this code)
    assert np.asarray(read_image(tmp_path / "rgb.png", (0, 4095))).max() == 100
    assert parse_window("0,4095") == (0.0, 4095.0) and parse_window([-1000, 400]) == (-1000.0, 400.0)
    for bad in ("5", "3,1", "a,b", [1, float("nan")], "0,1,2"):
        with pytest.raises(ValueError, match="option 'intensity_window' must be minmax, dtype or LO,HI"):
            parse_window(bad)


def test_float_tiff_is_scaled_and_nan_pixels_are_an_error(tmp_path):
    values = np.linspace(-1.0, 3.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    pixels = np.asarray(read_image(tmp_path / "f.tif"))[..., 0]
    np.testing.assert_array_equal(pixels, np.rint((values + 1) / 4 * 255).astype(np.uint8))
    values[2, 3] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(UnreadableImageError, match=r"nan.tif \(F\): 1 pixel\(s\) are NaN or infinite"):
        read_image(tmp_path / "nan.tif")
    assert scale_to_uint8(np.full((2, 2), 7.0)).max() == 0  # a constant image: black, not a division by zero


def test_folder_of_16bit_pngs_end_to_end_with_window_option_and_data_check(tmp_path):
    for i in range(3):
        _grey16(tmp_path / "a" / f"{i}.png", XRAY + i)
        _rgb(tmp_path / "b" / f"{i}.png")
    spec = DATASETS.get("folder")
    dataset = spec.build(tmp_path, {})
    assert (np.asarray(dataset.load_image(0)) == 255).mean() < 0.01
    windowed = spec.build(tmp_path, {"intensity_window": "0,4095"})
    assert windowed.name == f"{dataset.name}-window0-4095" and windowed.info["intensity_window"] == "0-4095"
    assert windowed.content_hash() != dataset.content_hash()  # features are re-extracted for another window
    with pytest.raises(DatasetError, match="dataset 'folder': option 'intensity_window' must be"):
        spec.build(tmp_path, {"intensity_window": "wide"})
    report = check_download("folder", tmp_path)
    assert report.facts["modes"] == {"I;16": 3, "RGB": 3} and report.facts["bit_depths"] == {"8": 3, "16": 3}
    assert [p.kind for p in report.problems] == ["bit-depth"] and report.ok  # mixed depths: a warning
    result = _cli("data", "check", "folder", "--root", str(tmp_path))
    assert "modes: I;16 3, RGB 3; bit depth 8/16 (8-bit 3, 16-bit 3)" in result.output
    assert ">8-bit images are scaled to 8-bit RGB by intensity_window=minmax" in result.output


def test_array_dataset_of_uint16_and_float_images(tmp_path):
    table = pd.DataFrame({"image_id": ["a", "b"], "label": [0, 1], "group": ["a", "b"]})
    images = np.stack([XRAY, XRAY // 2])
    dataset = ArrayImageDataset("arr16", table, ["x", "y"], images)
    np.testing.assert_array_equal(np.asarray(dataset.load_image(1))[..., 0], np.rint(XRAY / 4080 * 255).astype(np.uint8))
    floats = ArrayImageDataset("arrf", table, ["x", "y"], np.stack([XRAY, XRAY]).astype(np.float32) / 4080)
    floats.set_intensity_window("dtype")  # values in [0, 1]: the float range is 0..1
    assert floats.name == "arrf-windowdtype"
    np.testing.assert_array_equal(np.asarray(floats.load_image(0))[..., 0], np.rint(XRAY / 4080 * 255).astype(np.uint8))
    with pytest.raises(DatasetError, match="integer or float array"):
        ArrayImageDataset("bad", table, ["x", "y"], np.zeros((2, 4, 4, 2), dtype=np.uint8))


def test_decompression_bomb_is_a_per_file_error_with_the_way_to_allow_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # PIL's limit is restored afterwards
    _rgb(tmp_path / "big.png")  # 64 pixels: a bomb under a limit of 20 (PIL refuses above twice the limit)
    monkeypatch.setenv("MEDTRANSFER_MAX_IMAGE_PIXELS", "20")
    with pytest.raises(UnreadableImageError) as error:
        read_image(tmp_path / "big.png")
    assert "too large to decode safely" in str(error.value) and "MEDTRANSFER_MAX_IMAGE_PIXELS=<pixels>" in str(error.value)
    monkeypatch.setenv("MEDTRANSFER_MAX_IMAGE_PIXELS", "0")  # no limit
    assert read_image(tmp_path / "big.png").size == (8, 8)
    monkeypatch.setenv("MEDTRANSFER_MAX_IMAGE_PIXELS", "20")
    (tmp_path / "a").mkdir()
    _rgb(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "big.png").write_bytes((tmp_path / "big.png").read_bytes())
    _rgb(tmp_path / "b" / "small.png")
    report = check_download("folder", tmp_path)  # reported per file by data check, like other unreadable images
    assert [p.kind for p in report.problems if p.severity == "error"] == ["unreadable"]


def test_folder_skips_hidden_and_non_image_entries_and_says_so(tmp_path, caplog):
    for c in ("a", "b"):
        for i in range(2):
            _rgb(tmp_path / c / f"{i}.png", 10 * i)
    _rgb(tmp_path / ".ipynb_checkpoints" / "x-checkpoint.png")  # a hidden folder is not a class
    _rgb(tmp_path / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "a" / "._0.png").write_bytes(b"\0\5\26\7")  # macOS resource fork with an image suffix
    (tmp_path / "b" / "notes.txt").write_text("scanner settings")
    (tmp_path / "README.md").write_text("my data")
    dataset = DATASETS.get("folder").build(tmp_path, {})
    assert dataset.classes == ["a", "b"] and len(dataset) == 4
    assert dataset.info["skipped"]["hidden"] == 4 and dataset.info["skipped"]["not_image"] == 2
    assert "skipped 4 hidden entries and 2 files that are not images" in caplog.text
    report = check_download("folder", tmp_path)
    skipped = [p for p in report.problems if p.kind == "skipped"]
    assert report.ok and skipped and skipped[0].count == 6 and ".ipynb_checkpoints" in skipped[0].examples


def _csv(tmp_path, labels: list[str]) -> str:
    lines = ["image,label"]
    for i, label in enumerate(labels):
        _rgb(tmp_path / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{label}")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_csv_missing_labels_are_an_error_naming_the_rows(tmp_path):
    _csv(tmp_path, ["a", "NaN", "b", "nan", "NA", "", "a", "N/A", "b", "null"])
    with pytest.raises(DatasetError) as error:
        DATASETS.get("csv").build(tmp_path, {})
    message = str(error.value)
    assert "rows [3, 5, 6, 7, 9] ... have an empty or missing label (6 row(s)" in message and "\n" not in message


def test_csv_label_spelling_variants_are_an_error_or_merged_on_request(tmp_path):
    _csv(tmp_path, ["a", "a ", "A", "a", "b", "b"])
    with pytest.raises(DatasetError, match=r"differ only in case or surrounding spaces: 'A' \(1\) / 'a' \(2\) / 'a ' \(1\)"):
        DATASETS.get("csv").build(tmp_path, {})
    dataset = DATASETS.get("csv").build(tmp_path, {"merge_label_variants": "true"})
    assert dataset.classes == ["a", "b"] and dataset.class_counts() == {"a": 4, "b": 2}
    assert dataset.info["merged_labels"] == {"a": ["A", "a "]}
    _csv(tmp_path, ["None", "b", "None", "b"])  # "None" is a real class name, not a missing value
    assert DATASETS.get("csv").build(tmp_path, {}).classes == ["None", "b"]


@pytest.mark.parametrize("name, options, message", [
    ("folder", {"foo": 1}, "dataset 'folder' has no option(s) ['foo']"),
    ("csv", {"label_col": "y"}, "dataset 'csv' has no option(s) ['label_col']"),
    ("csv", {"low_data": 0.1}, "dataset 'csv' has no option(s) ['low_data']"),
    ("csv", {"merge_label_variants": "yes"}, "dataset 'csv': option 'merge_label_variants' must be true or false, got 'yes'"),
    ("synthderm", {"n_lesions": 0}, "dataset 'synthderm': option 'n_lesions' must be an integer >= 84, got 0"),
    ("synthderm", {"image_size": 31.5}, "dataset 'synthderm': option 'image_size' must be an integer >= 16, got 31.5"),
    ("synthderm", {"sizee": 32}, "dataset 'synthderm' has no option(s) ['sizee']"),
])
def test_dataset_options_unknown_keys_and_bad_values_are_errors(tmp_path, name, options, message):
    _csv(tmp_path, ["a", "b"])
    with pytest.raises(DatasetError) as error:
        DATASETS.get(name).build(tmp_path, options)
    assert str(error.value).startswith(message)


def test_data_check_json_reports_modes(tmp_path):
    _rgb(tmp_path / "a" / "0.png")
    _grey16(tmp_path / "b" / "0.png", XRAY)
    result = _cli("data", "check", "folder", "--root", str(tmp_path), "--json")
    facts = json.loads(result.output)["facts"]
    assert facts["modes"] == {"RGB": 1, "I;16": 1} and facts["intensity_window"] == "minmax"
