"""The run's built-encoder cache (EvalContext.encoder): reuse across contexts, LRU eviction by weight bytes."""
import torch

from evaluators import base
from evaluators.base import EvalContext, ExtractionSettings
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions, Preprocessing


def _spec(name: str, width: int, builds: list[str]) -> EncoderSpec:
    def build(options: LoadOptions) -> Encoder:
        builds.append(name)
        trunk = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU())
        return Encoder(name, trunk, torch.nn.AdaptiveAvgPool2d(1), width, Preprocessing(input_size=8), {})
    return EncoderSpec(name=name, architecture="tiny", feature_dim=width, build=build, kind="random")


def _context(spec: EncoderSpec, cache: dict) -> EvalContext:
    return EvalContext(spec, LoadOptions(), None, None, ExtractionSettings(device=torch.device("cpu"), cache_dir=None), ".",
                       encoder_cache=cache)


def test_encoders_are_built_once_per_run_while_they_fit():
    builds: list[str] = []
    a, b = _spec("a", 4, builds), _spec("b", 4, builds)
    cache: dict = {}
    first = _context(a, cache).encoder()
    for spec in (b, a, b, a):  # evaluator-major grids alternate encoders cell by cell
        _context(spec, cache).encoder()
    assert builds == ["a", "b"]
    assert _context(a, cache).encoder() is first
    assert list(cache) == ["b", "a"]  # least recently used first


def test_least_recently_used_encoders_leave_when_over_budget(monkeypatch):
    builds: list[str] = []
    specs = {name: _spec(name, 4, builds) for name in "abc"}
    one = base._weight_bytes(specs["a"].build(LoadOptions()))
    builds.clear()
    monkeypatch.setattr(base, "ENCODER_CACHE_BYTES", 2 * one)  # room for two
    cache: dict = {}
    for name in "abab" + "c" + "b" + "a":
        _context(specs[name], cache).encoder()
    # c pushed out a (least recent); b was kept and reused; a is built again, pushing out c
    assert builds == ["a", "b", "c", "a"]
    assert list(cache) == ["b", "a"]


def test_an_encoder_over_budget_alone_is_still_kept(monkeypatch):
    builds: list[str] = []
    monkeypatch.setattr(base, "ENCODER_CACHE_BYTES", 1)
    cache: dict = {}
    spec = _spec("big", 8, builds)
    assert _context(spec, cache).encoder() is _context(spec, cache).encoder()
    assert builds == ["big"] and list(cache) == ["big"]
