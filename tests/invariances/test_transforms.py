"""Transformation grids: sizes for any k, identity points, exact views."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from invariances.transforms import (ALL_TRANSFORMS, ViewGeometry, balanced_counts, build_grid, build_grids,
                                    elastic_displacement)
from pretrained.preprocessing import Preprocessing
from tests.probe_helpers import smooth_images


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(smooth_images(1, 40, seed=1)[0])


def test_balanced_counts_known_values():
    assert balanced_counts(256, 2) == (16, 16)
    assert balanced_counts(20, 2) == (5, 4)
    assert balanced_counts(5, 2) == (3, 2)
    assert balanced_counts(256, 4) == (4, 4, 4, 4)
    assert balanced_counts(20, 4) == (3, 2, 2, 2)
    assert balanced_counts(1, 2) == (1, 1)
    with pytest.raises(ValueError):
        balanced_counts(0, 2)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 20, 256])
def test_grids_work_for_any_k(k):
    for name in ALL_TRANSFORMS:
        grid = build_grid(name, k)
        n = len(grid.params)
        assert n == len(grid.identity)
        if name in ("translation", "shear"):
            assert n == math.prod(balanced_counts(k, 2)) >= k
        elif name == "resized_crop":
            assert n == math.prod(balanced_counts(k, 4)) >= k
        elif name in ("hflip", "vflip", "grayscale", "invert", "equalize"):
            assert n == 2 and grid.identity == (True, False)
        elif name == "posterize":
            assert n == 7 and not any(grid.identity)
        else:
            assert n == k


def test_identity_points_are_flagged_and_excluded():
    rotation = build_grid("rotation", 4)
    assert rotation.params == (0.0, 90.0, 180.0, 270.0)
    assert rotation.active == [1, 2, 3]
    scale = build_grid("scale", 8)  # 0.25, 0.5, ..., 2.0 contains 1.0
    assert [scale.params[j] for j in range(8) if scale.identity[j]] == [1.0]
    translation = build_grid("translation", 9)  # 3x3 grid: the centre is (0, 0)
    assert sum(translation.identity) == 1 and translation.params[translation.identity.index(True)] == (0.0, 0.0)
    assert sum(build_grid("translation", 4).identity) == 0  # 2x2 symmetric grid has no zero
    assert build_grid("blur", 5).identity == (True, False, False, False, False)


def test_geometry_reproduces_the_encoder_preprocessing(image):
    for pre in (Preprocessing(input_size=32, resize_size=36, interpolation="bicubic"),
                Preprocessing(input_size=32, resize_size=None, interpolation="bilinear"),
                Preprocessing(input_size=24, resize_size=24, mean=None, std=None, grayscale=True)):
        assert torch.equal(ViewGeometry(pre).clean(image), pre(image))


def test_identity_views_equal_the_clean_view(image):
    geometry = ViewGeometry(Preprocessing(input_size=32, resize_size=36))
    clean = geometry.clean(image)
    for grid in build_grids(["rotation", "hflip", "translation", "scale", "shear", "brightness", "blur", "sharpness",
                             "grayscale", "invert", "equalize"], k=9):
        for j in range(len(grid.params)):
            if grid.identity[j]:
                assert torch.allclose(grid.view(image, j, geometry), clean, atol=1e-5), (grid.name, grid.params[j])


def test_rotation_and_flip_views_are_exact(image):
    geometry = ViewGeometry(Preprocessing(input_size=40, resize_size=40))
    clean = geometry.clean(image)
    rotation = build_grid("rotation", 4)
    assert torch.equal(rotation.view(image, 1, geometry), torch.rot90(clean, 1, dims=(1, 2)))  # 90 deg counter-clockwise
    assert torch.equal(rotation.view(image, 2, geometry), torch.rot90(clean, 2, dims=(1, 2)))
    assert torch.equal(build_grid("hflip").view(image, 1, geometry), clean.flip(-1))
    assert torch.equal(build_grid("vflip").view(image, 1, geometry), clean.flip(-2))


def test_every_transform_changes_the_image_and_keeps_the_shape(image):
    geometry = ViewGeometry(Preprocessing(input_size=32, resize_size=36))
    clean = geometry.clean(image)
    for grid in build_grids(list(ALL_TRANSFORMS), k=3):
        j = grid.active[-1]
        view = grid.view(image, j, geometry)
        assert view.shape == clean.shape
        assert not torch.allclose(view, clean, atol=1e-3), grid.name


def test_elastic_field_is_seeded_and_resolution_free():
    a = elastic_displacement(250.0, 5.0, seed=3, height=224, width=224, size=224)
    assert torch.equal(a, elastic_displacement(250.0, 5.0, seed=3, height=224, width=224, size=224))
    assert not torch.equal(a, elastic_displacement(250.0, 5.0, seed=4, height=224, width=224, size=224))
    small = elastic_displacement(250.0, 5.0, seed=3, height=112, width=112, size=112)
    assert small.shape == (1, 112, 112, 2)
    # same field drawn at the 224 reference, resampled: magnitudes (normalised units) agree
    assert small.abs().mean().item() == pytest.approx(a.abs().mean().item(), rel=0.1)


def test_bad_names_and_k_are_errors():
    with pytest.raises(ValueError, match="unknown transform"):
        build_grids(["rotaton"])
    with pytest.raises(ValueError, match="twice"):
        build_grids(["rotation", "rotation"])
    with pytest.raises(ValueError, match="not run"):
        build_grids(["rotation"], k={"hue": 3})
    with pytest.raises(ValueError):
        build_grid("rotation", 0)
    assert [len(g.params) for g in build_grids(["rotation", "hue"], k={"rotation": 6})] == [6, 256]


def test_grid_description_is_json_ready():
    described = build_grid("shear", 4).describe()
    assert described["params"] == [[-160.0, -160.0], [160.0, -160.0], [-160.0, 160.0], [160.0, 160.0]]
    assert described["n_scored"] == 4
    assert dataclasses.is_dataclass(build_grid("hue", 2))
    assert np.isfinite(build_grid("hue", 3).params).all()


def test_every_grid_pickles_for_worker_processes(image):
    """DataLoader workers start from a fork server and receive the views dataset pickled."""
    import pickle
    geometry = ViewGeometry(Preprocessing(input_size=32, resize_size=36))
    for name in ALL_TRANSFORMS:
        grid = build_grid(name, 4)
        restored = pickle.loads(pickle.dumps(grid))
        for j in range(len(grid.params)):
            assert torch.equal(restored.view(image, j, geometry), grid.view(image, j, geometry)), name
