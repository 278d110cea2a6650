"""Declared options (benchmark/options.py, EvaluatorSpec.option_schema): every case of issue 13 is a
one-line error naming the option, the allowed values and the value, raised before any data is read."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

import evaluators.builtin  # noqa: F401  (registers the built-in evaluators)
from benchmark.options import Bool, Choice, Float, Int, ListOf, OptionError, validate_value
from evaluators.base import EvaluatorSpec
from evaluators.registry import EVALUATORS

ISSUE_CASES = [  # (evaluator, overrides, expected message)
    ("linear", {"refit_on": "foo"}, "linear: option 'refit_on' must be one of 'train+val', 'train', got 'foo'"),
    ("linear", {"selection_metric": "foo"}, "linear: option 'selection_metric' must be one of 'auto', 'accuracy'"),
    ("linear", {"wd_steps": 0}, "linear: option 'wd_steps' must be an integer >= 1, got 0"),
    ("linear", {"standardize": "yes"}, "linear: option 'standardize' must be true or false, got 'yes'"),
    ("linear", {"n_boot": 1.5}, "linear: option 'n_boot' must be an integer >= 1, got 1.5"),
    ("linear", {"wd_min_exp": 3, "wd_max_exp": -3}, "linear: option 'wd_min_exp' must be <= wd_max_exp=-3.0, got 3.0"),
    ("knn", {"ks": [1.5]}, "knn: option 'ks' must be a non-empty list of integers >= 1, got [1.5]"),
    ("knn", {"ks": "abc"}, "knn: option 'ks' must be a non-empty list of integers >= 1, got 'abc'"),
    ("knn", {"n_boot": 1.5}, "knn: option 'n_boot' must be an integer >= 1, got 1.5"),
    ("knn", {"temperature": float("inf")}, "knn: option 'temperature' must be a finite number >= 0.0001, got Infinity"),
    ("knn", {"temperature": float("nan")}, "knn: option 'temperature' must be a finite number >= 0.0001, got NaN"),
    ("knn", {"chunk_size": 0}, "knn: option 'chunk_size' must be an integer >= 1, got 0"),
    ("knn", {"chunk_size": -3}, "knn: option 'chunk_size' must be an integer >= 1, got -3"),
    ("knn", {"primary_k": 3}, "knn: option 'primary_k' must be one of ks=[10, 20], got 3"),
    ("dip", {"lpips_nets": ["foo"]}, "dip: option 'lpips_nets' must be a list of distinct values among 'alex', 'vgg', 'squeeze', got [\"foo\"]"),
    ("dip", {"generator_skip": [4, 4]}, "dip: options 'generator_channels', 'generator_skip', 'generator_filters' need one entry each"),
    ("multiview-invariance", {"max_pairs": -1}, "multiview-invariance: option 'max_pairs' must be null or an integer >= 1, got -1"),
    ("fewshot", {"n_way": 1}, "fewshot: option 'n_way' must be an integer >= 2, got 1"),
    ("kshot-linear", {"seeds": 0}, "kshot-linear: option 'seeds' must be an integer >= 1, got 0"),
    ("finetune", {"epochs": 3}, "finetune: give exactly one of the options 'steps', 'epochs'"),
    ("finetune", {"rrc_scale": [0.9, 0.1]}, "finetune: option 'rrc_scale' must be null or a list of 2 increasing finite numbers in (0, 1]"),
    ("finetune", {"eval_every": "epochs"}, "finetune: option 'eval_every' must be an integer >= 1 or 'epoch', got 'epochs'"),
    ("invariance", {"k": {"spin": 3}}, "invariance: option 'k' must be an integer >= 1 or a mapping from values among 'rotation'"),
    ("saliency", {"head_checkpoint": "/no/such/head.pt"}, "saliency: option 'head_checkpoint' must be null or the path of an existing file"),
    ("medmnist-v2", {"size": 64}, "medmnist-v2: option 'size' must be 28 or 224 with init='random'"),
]


@pytest.mark.parametrize("evaluator, overrides, expected", ISSUE_CASES, ids=[f"{e}-{'-'.join(o)}" for e, o, _ in ISSUE_CASES])
def test_bad_values_are_one_line_errors_naming_option_value_and_range(evaluator, overrides, expected):
    with pytest.raises(OptionError) as error:
        EVALUATORS.get(evaluator).resolve_options(None, overrides)
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message


def test_values_are_normalised_to_the_declared_type():
    options = EVALUATORS.get("knn").resolve_options(None, {"ks": 5, "primary_k": 5.0, "neighbours": "Train+Val",
                                                            "n_boot": "200"})
    assert options["ks"] == [5] and options["primary_k"] == 5 and isinstance(options["primary_k"], int)
    assert options["neighbours"] == "train+val" and options["n_boot"] == 200
    assert EVALUATORS.get("linear").resolve_options(None, {"standardize": "True", "tol": 1})["standardize"] is True
    assert validate_value("x", "t", 1, Float()) == 1.0 and isinstance(validate_value("x", "t", 1, Float()), float)
    assert validate_value("x", "e", None, Int(nullable=True)) is None
    for value in (True, "1.5", float("inf")):  # a bool is not an integer; nor is text that is not one
        with pytest.raises(OptionError):
            validate_value("x", "n", value, Int())
    with pytest.raises(OptionError, match="must be one of 'a', 'b', got 1"):
        validate_value("x", "c", 1, Choice("a", "b"))
    with pytest.raises(OptionError, match="must be true or false, got 1"):
        validate_value("x", "b", 1, Bool())


def test_every_registered_evaluator_declares_every_option_and_its_presets_validate():
    for name in EVALUATORS.names():
        spec = EVALUATORS.get(name)
        assert spec.option_schema is not None, f"{name} declares no option_schema"
        assert set(spec.option_schema) == set(spec.defaults), name
        for preset in [None, *spec.presets]:
            assert spec.resolve_options(preset) is not None
        if spec.benchmark_preset not in (None, "default"):
            assert spec.benchmark_preset in spec.presets


def _run(context, options):  # never called
    raise AssertionError


def test_a_plugin_without_declarations_gets_its_options_as_given():
    spec = EvaluatorSpec(name="plugin-eval", run=_run, defaults={"alpha": 1, "mode": "fast"})
    assert spec.resolve_options(None, {"alpha": "anything", "mode": [1]}) == {"alpha": "anything", "mode": [1]}
    with pytest.raises(ValueError, match="has no option 'beta'"):  # unknown keys stay errors
        spec.resolve_options(None, {"beta": 1})


def test_declaration_mistakes_fail_at_registration():
    with pytest.raises(TypeError, match=r"undeclared \['mode'\]"):
        EvaluatorSpec(name="p", run=_run, defaults={"alpha": 1, "mode": "x"}, option_schema={"alpha": Int()})
    with pytest.raises(OptionError, match="p: option 'alpha' must be an integer >= 2, got 1"):  # a default outside its range
        EvaluatorSpec(name="p", run=_run, defaults={"alpha": 1}, option_schema={"alpha": Int(min=2)})
    with pytest.raises(TypeError, match="preset 'q' sets undeclared options"):
        EvaluatorSpec(name="p", run=_run, defaults={"alpha": 1}, presets={"q": {"beta": 2}}, option_schema={"alpha": Int()})
    spec = EvaluatorSpec(name="p", run=_run, defaults={"alpha": [1]}, option_schema={"alpha": ListOf(Int(min=1))})
    assert spec.resolve_options(None, {"alpha": 3}) == {"alpha": [3]}


def _cli(*args: str):
    from cli import cli
    return CliRunner().invoke(cli, list(args))


def test_cli_bad_option_fails_before_the_dataset_is_read(tmp_path):
    result = _cli("linear", "-m", "resnet18-random", "-d", "folder", "--root", str(tmp_path / "absent"),
                  "--results", str(tmp_path / "r"), "-o", "wd_steps=0")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "Error: linear: option 'wd_steps' must be an integer >= 1, got 0"
    result = _cli("knn", "-m", "resnet18-random", "-d", "folder", "--root", str(tmp_path / "absent"),
                  "--results", str(tmp_path / "r"), "-o", "temperature=Infinity")
    assert result.exit_code == 2 and "option 'temperature' must be a finite number >= 0.0001, got Infinity" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", ["1", "15"])
def test_cli_image_size_has_a_sensible_minimum(tmp_path, size):
    result = _cli("knn", "-m", "resnet18-random", "-d", "synthderm", "--results", str(tmp_path / "r"), "--image-size", size)
    assert result.exit_code == 2 and f"must be 0 (each encoder's own input size) or >= 16 px, got {size}" in result.output


def test_evaluator_help_lists_what_each_option_allows():
    result = _cli("linear", "--help")
    assert result.exit_code == 0 and "wd_steps=45  (an integer >= 1)" in result.output
