from __future__ import annotations

import pytest

from benchmark.registry import DuplicateNameError, Registry, UnknownNameError


class Thing:
    def __init__(self, name: str, aliases: tuple[str, ...] = ()):
        self.name, self.aliases = name, aliases


def test_register_get_alias_and_case():
    registry: Registry[Thing] = Registry("thing", "medtransfer.test-things")
    registry.add("alpha-one", Thing("alpha-one", ("a1",)))
    assert registry.get("Alpha-One").name == "alpha-one"
    assert registry.get("a1").name == "alpha-one"
    assert registry.resolve("A1") == "alpha-one"
    assert registry.names() == ["alpha-one"]


def test_unknown_name_suggests_close_matches():
    registry: Registry[Thing] = Registry("encoder", "medtransfer.test-things")
    registry.add("resnet50-moco-v2", Thing("resnet50-moco-v2"))
    registry.add("resnet18-random", Thing("resnet18-random"))
    with pytest.raises(UnknownNameError) as info:
        registry.get("resnet50-mocov2")
    assert "resnet50-moco-v2" in str(info.value)
    assert info.value.suggestions[0] == "resnet50-moco-v2"
    assert "unknown encoder 'resnet50-mocov2'" in str(info.value)


def test_duplicates_rejected_including_aliases():
    registry: Registry[Thing] = Registry("thing", "medtransfer.test-things")
    registry.add("x", Thing("x", ("why",)))
    with pytest.raises(DuplicateNameError):
        registry.add("x", Thing("x"))
    with pytest.raises(DuplicateNameError):
        registry.add("why", Thing("why"))
    with pytest.raises(DuplicateNameError):
        registry.add("z", Thing("z", ("x",)))


def test_validation_rejects_wrong_type():
    def validate(obj):
        if not isinstance(obj, Thing):
            raise TypeError("not a thing")
    registry: Registry[Thing] = Registry("thing", "medtransfer.test-things", validate=validate)
    with pytest.raises(TypeError):
        registry.add("bad", object())
    registry.register("good")(Thing("good"))
    assert "good" in registry


def test_builtins_load_lazily():
    from pretrained.registry import ENCODERS
    from datasets.registry import DATASETS
    from evaluators.registry import EVALUATORS
    assert "resnet18-random" in ENCODERS.names()
    assert "synthderm" in DATASETS.names()
    assert "linear" in EVALUATORS.names()
    assert ENCODERS.resolve("supervised") == "resnet50-supervised"
