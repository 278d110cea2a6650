"""Property-based checks of the option validation (hypothesis).

For every declared option of every registered evaluator: a random valid value is accepted and comes
back normalised (validating it again changes nothing); a random invalid value is an OptionError whose
message is one line naming the option and the value. Whole option sets drawn from the schemas never
raise anything but a one-line OptionError, and random valid options never crash a cheap run (kNN,
linear probe on tiny Gaussian features).
"""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evaluators.builtin  # noqa: F401
from benchmark.options import (AnyOf, Bool, Check, Choice, ExistingPath, Float, Int, ListOf, MapOf, OptionError, Text,
                               validate_value)
from datasets.generic import CSV_SCHEMA
from datasets.synthderm import SYNTHDERM_SCHEMA
from evaluators.knn import run_knn
from evaluators.linear import run_linear
from evaluators.registry import EVALUATORS
from tests.evaluators.conftest import FeatureContext, gaussian_features

# seeded (derandomize) and without an example database, as every test here: the same examples on every run
SLOW_OK = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture]
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_OK)
SPAN = 50  # integers drawn within SPAN of a bound (the exact size of a valid integer is irrelevant here)

EVALUATOR_NAMES = sorted(EVALUATORS.names())
# every declared schema: the evaluators' and the datasets' (owner as it appears in messages)
SCHEMAS = {**{name: EVALUATORS.get(name).option_schema for name in EVALUATOR_NAMES},
           "dataset 'synthderm'": SYNTHDERM_SCHEMA, "dataset 'csv'": CSV_SCHEMA}


def valid(check: Check, small: bool = False) -> st.SearchStrategy:
    """Values ``check`` accepts, in the forms a user may type them (JSON numbers, text, case variants)."""
    span = 4 if small else SPAN
    if isinstance(check, Int):
        low = check.min if check.min is not None else (check.max - span if check.max is not None else -span)
        high = check.max if check.max is not None else low + span
        base = st.integers(low, high)
        strategy = base | base.map(float) | base.map(str) if not small else base
    elif isinstance(check, Float):
        low = check.min if check.min is not None else -1e6
        high = check.max if check.max is not None else 1e6
        strategy = st.floats(low, high, exclude_min=check.min_open, exclude_max=check.max_open, allow_nan=False,
                             allow_infinity=False)
        if not small:
            strategy = strategy | strategy.map(repr)
    elif isinstance(check, Bool):
        strategy = st.booleans() | st.sampled_from(["true", "False", " TRUE "])
    elif isinstance(check, Choice):
        strategy = st.sampled_from(check.choices) | st.sampled_from(check.choices).map(lambda c: f" {c.upper()} ")
    elif isinstance(check, Text):
        strategy = st.text(min_size=1).filter(str.strip)
    elif isinstance(check, ExistingPath):
        strategy = st.nothing()  # nullable in every declaration: null is drawn below
    elif isinstance(check, ListOf):
        low = check.length if check.length is not None else check.min_len
        high = check.length if check.length is not None else (check.max_len if check.max_len is not None else low + 3)
        strategy = st.lists(valid(check.item, small), min_size=low, max_size=high,
                            unique_by=(lambda v: json.dumps(validate_value("t", "t", v, check.item))) if check.unique else None)
        if check.increasing:
            strategy = strategy.map(lambda items: sorted(items, key=lambda v: validate_value("t", "t", v, check.item)))
    elif isinstance(check, MapOf):
        strategy = st.dictionaries(valid(check.key), valid(check.value, small), min_size=1, max_size=3)
    elif isinstance(check, AnyOf):
        strategy = st.one_of([valid(c, small) for c in check.checks])
    else:
        raise AssertionError(f"no strategy for {check!r}")
    return strategy | st.none() if check.nullable else strategy


_JUNK = st.one_of(st.text(alphabet="xyz?! ", max_size=5), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                  st.sampled_from([float("nan"), float("inf"), float("-inf")]), st.booleans(), st.integers(),
                  st.floats(allow_nan=True))


def invalid(check: Check) -> st.SearchStrategy:
    """Values ``check`` must refuse: out of range, wrong type, non-finite, misspelt, wrong length."""
    def refused(value) -> bool:
        try:
            validate_value("t", "t", value, check)
        except OptionError:
            return True
        return False
    pool = [_JUNK, st.lists(_JUNK, min_size=1, max_size=3)]
    if isinstance(check, (Int, Float)):
        if check.min is not None:
            pool.append(st.floats(check.min - 1e6, check.min, allow_nan=False))
            pool.append(st.integers(int(check.min) - SPAN, math.ceil(check.min) - 1))
        if check.max is not None:
            pool.append(st.floats(check.max, check.max + 1e6, allow_nan=False))
        if isinstance(check, Int):
            pool.append(st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: not float(v).is_integer()))
    if isinstance(check, Choice):
        pool.append(st.sampled_from(check.choices).map(lambda c: c + "x"))
    if isinstance(check, ListOf):
        pool.append(st.lists(invalid(check.item), min_size=1, max_size=3))
    if not check.nullable:
        pool.append(st.none())
    return st.one_of(pool).filter(refused)


def _assert_one_line_naming(error: OptionError, owner: str, key: str) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(f"{owner}: ") and " got " in message
    assert f"'{key}'" in message


def _draw_option(name: str, data, strategy_for) -> tuple[str, Check, object]:
    """(option name, its check, a value drawn from ``strategy_for(check)``) for one evaluator or dataset."""
    schema = SCHEMAS[name]
    key = data.draw(st.sampled_from(sorted(schema)), label="option")
    return key, schema[key], data.draw(strategy_for(schema[key]), label="value")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@FAST
@given(data=st.data())
def test_random_valid_values_are_accepted_and_normalised(name, data):
    key, check, value = _draw_option(name, data, valid)
    normalised = validate_value(name, key, value, check)
    assert validate_value(name, key, normalised, check) == normalised  # idempotent: already canonical


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@FAST
@given(data=st.data())
def test_random_invalid_values_are_one_line_errors_naming_the_option(name, data):
    key, check, value = _draw_option(name, data, invalid)
    with pytest.raises(OptionError) as error:
        validate_value(name, key, value, check)
    _assert_one_line_naming(error.value, name, key)


@pytest.mark.parametrize("name", EVALUATOR_NAMES)
@settings(FAST, max_examples=30)
@given(data=st.data())
def test_random_option_sets_never_crash_validation(name, data):
    spec = EVALUATORS.get(name)
    keys = data.draw(st.lists(st.sampled_from(sorted(spec.option_schema)), unique=True, max_size=4))
    bad = data.draw(st.sampled_from(keys)) if keys and data.draw(st.booleans()) else None
    overrides = {k: data.draw(invalid(spec.option_schema[k]) if k == bad else valid(spec.option_schema[k])) for k in keys}
    try:
        spec.resolve_options(None, overrides)
    except OptionError as error:  # a rule between options (primary_k in ks) or the invalid value
        assert "\n" not in str(error) and str(error).startswith(f"{name}: ")
        if bad is not None:
            return
    else:
        assert bad is None, f"{bad}={overrides[bad]!r} was accepted"


def _tiny_context(tmp_path_factory):
    split = lambda seed: gaussian_features(6, 3, dim=4, separation=4.0, seed=seed)
    return FeatureContext({"train": split(0), "val": split(1), "test": split(2)}, 3,
                          tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("name, run, pinned", [
    ("knn", run_knn, {"n_boot": 5}),
    ("linear", run_linear, {"n_boot": 5, "max_iter": 15, "wd_steps": 3}),
])
@settings(FAST, max_examples=8)
@given(data=st.data())
def test_random_valid_options_never_crash_a_cheap_run(name, run, pinned, tmp_path_factory, data):
    spec = EVALUATORS.get(name)
    schema = {k: c for k, c in spec.option_schema.items() if k not in pinned}
    options = {k: data.draw(valid(c, small=True), label=k) for k, c in schema.items()}
    if name == "knn":
        options["ks"] = sorted({min(k, 18) for k in validate_value(name, "ks", options["ks"], schema["ks"])})
        options["primary_k"] = data.draw(st.sampled_from(options["ks"]))
    if name == "linear":  # the rules: wd_min_exp <= wd_max_exp; parity fixes its selection metrics, refit, raw features
        options["wd_min_exp"], options["wd_max_exp"] = sorted(float(options[k]) for k in ("wd_min_exp", "wd_max_exp"))
        if str(options["protocol"]).strip().lower() == "parity":
            options.update(refit_on="train+val", standardize=False,
                           selection_metric=data.draw(st.sampled_from(["auto", "accuracy", "mean_per_class_accuracy"])))
        elif str(options["selection_metric"]).strip().lower() == "mean_per_class_accuracy":
            options["selection_metric"] = "balanced_accuracy"
    options = spec.resolve_options(None, {**options, **pinned})
    output = run(_tiny_context(tmp_path_factory), options)
    assert output.primary_metric in output.metrics
    value = output.metrics[output.primary_metric]["value"]
    assert value is None or math.isnan(value) or 0.0 <= value <= 1.0
