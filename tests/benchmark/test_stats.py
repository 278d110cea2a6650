"""Known answers for the paired statistics: hand-computed cases, brute force from definitions, scipy/sklearn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from benchmark import stats


def _onehot(pred: np.ndarray, c: int, confidence: float = 0.9) -> np.ndarray:
    proba = np.full((len(pred), c), (1 - confidence) / (c - 1))
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_paired_bootstrap_of_one_discordant_item_has_the_binomial_answer():
    # 20 images, 10 per class; A is right everywhere, B wrong on one image of class 0. Under the
    # stratified bootstrap the accuracy difference is X / 20 with X ~ Binomial(10, 1/10) (copies of
    # that image), so P(d <= 0) = P(X = 0) = 0.9^10 and the 95 % interval is [0, 3/20].
    y = np.repeat([0, 1], 10)
    wrong = y.copy()
    wrong[0] = 1
    result = stats.paired_bootstrap(y, _onehot(y, 2), _onehot(wrong, 2), "accuracy", n_boot=4000, seed=1)
    assert result.difference == pytest.approx(1 / 20) and result.value_a == 1.0
    assert result.ci == pytest.approx((0.0, 3 / 20))
    assert result.p_value == pytest.approx(2 * 0.9 ** 10, abs=0.04)


def test_identical_predictions_differ_by_exactly_zero_with_p_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    result = stats.paired_bootstrap(y, proba, proba, "balanced_accuracy", n_boot=500)
    assert result.difference == 0.0 and result.ci == (0.0, 0.0) and result.p_value == 1.0
    assert result.value_a == pytest.approx(balanced_accuracy_score(y, proba.argmax(1)))


def test_pairing_removes_the_shared_noise():
    # B = A with 3 of 200 predictions flipped: paired interval is far narrower than the two CIs
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    pred_a = np.where(rng.random(200) < 0.7, y, 1 - y)
    pred_b = pred_a.copy()
    flip = np.flatnonzero(pred_a == y)[:3]
    pred_b[flip] = 1 - pred_b[flip]
    result = stats.paired_bootstrap(y, _onehot(pred_a, 2), _onehot(pred_b, 2), "accuracy", n_boot=2000)
    assert result.difference == pytest.approx(3 / 200)
    assert result.ci[1] - result.ci[0] < 0.04  # a single accuracy's 95 % CI at n=200 is ~0.12 wide
    assert result.ci[0] >= 0.0 and result.p_value < 0.3


def test_identical_replicates_give_the_single_set_answer():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50)
    a, b = rng.dirichlet(np.ones(2), 50), rng.dirichlet(np.ones(2), 50)
    one = stats.paired_bootstrap(y, a, b, "balanced_accuracy", n_boot=300, seed=2)
    two = stats.paired_bootstrap(y, np.stack([a, a]), np.stack([b, b]), "balanced_accuracy", n_boot=300, seed=2)
    assert two.difference == pytest.approx(one.difference) and two.ci == pytest.approx(one.ci)
    assert "2 replicates redrawn" in two.method


def _delong_brute_force(y, score_a, score_b):
    """DeLong et al. (1988) from the definitions: kernel psi over all (positive, negative) pairs."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    v10, v01 = np.zeros((2, m)), np.zeros((2, n))
    for r, s in enumerate((score_a, score_b)):
        for i, p in enumerate(pos):
            for j, q in enumerate(neg):
                psi = 1.0 if s[p] > s[q] else 0.5 if s[p] == s[q] else 0.0
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    auc = v10.mean(axis=1)
    s10, s01 = np.cov(v10), np.cov(v01)  # 2 x 2, ddof 1
    cov = s10 / m + s01 / n
    return auc, cov


def test_delong_matches_the_brute_force_definition_with_ties():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(23, int), np.zeros(31, int)]
    score_a = np.round(rng.normal(size=54) + y, 1)  # rounding makes ties
    score_b = np.round(0.5 * score_a + rng.normal(size=54), 1)
    auc, cov = _delong_brute_force(y, score_a, score_b)
    to_proba = lambda s: np.c_[1 - 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-s))]
    result = stats.delong_test(y, to_proba(score_a), to_proba(score_b))
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert result.value_a == pytest.approx(auc[0]) and result.value_b == pytest.approx(auc[1])
    assert result.value_a == pytest.approx(roc_auc_score(y, score_a))
    assert (result.ci[1] - result.ci[0]) / (2 * scipy_stats.norm.ppf(0.975)) == pytest.approx(se, rel=1e-9)
    assert result.p_value == pytest.approx(2 * scipy_stats.norm.sf(abs(auc[0] - auc[1]) / se), rel=1e-9)
    assert stats.delong_variance(y, to_proba(score_a))[1] == pytest.approx(cov[0, 0], rel=1e-9)


def test_delong_on_the_hanley_mcneil_ratings():
    # Hanley & McNeil (1982), Radiology 143:29, Table 1: 58 normal and 51 abnormal CT images rated 1-5.
    # Published: AUC 0.893 with SE 0.032 (their approximation; DeLong's estimate lies close to it).
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    score = np.r_[normal, abnormal] / 6.0
    auc, variance = stats.delong_variance(y, np.c_[1 - score, score])
    assert auc == pytest.approx(0.893, abs=5e-4)
    assert math.sqrt(variance) == pytest.approx(0.032, abs=0.003)


def test_multiclass_delong_agrees_with_sklearn_and_the_stratified_bootstrap():
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1, 2], [60, 90, 50])
    logits_a = rng.normal(size=(200, 3)) + 1.2 * np.eye(3)[y]
    logits_b = logits_a + rng.normal(scale=1.0, size=(200, 3))
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)
    a, b = soft(logits_a), soft(logits_b)
    result = stats.delong_test(y, a, b)
    assert result.value_a == pytest.approx(roc_auc_score(y, a, multi_class="ovr"))
    assert result.value_b == pytest.approx(roc_auc_score(y, b, multi_class="ovr"))
    _, reps = stats.replicate_metric(y, [a, b], "auroc", n_boot=3000, seed=0)
    bootstrap_se = float(np.std(reps[0] - reps[1], ddof=1))
    delong_se = (result.ci[1] - result.ci[0]) / (2 * scipy_stats.norm.ppf(0.975))
    assert delong_se == pytest.approx(bootstrap_se, rel=0.12)


def test_paired_episodes_by_hand():
    # d = (0.1, 0.2, 0.3): mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 3.464 on 2 df
    a = np.array([0.6, 0.7, 0.8])
    b = np.array([0.5, 0.5, 0.5])
    result = stats.paired_episodes(a, b)
    half = scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert result.difference == pytest.approx(0.2)
    assert result.ci == pytest.approx((0.2 - half, 0.2 + half))
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(0.2 / (0.1 / math.sqrt(3)), 2))
    assert stats.paired_episodes(a, a).p_value == 1.0


def test_holm_by_hand():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])


def test_ci_aware_ranks_share_rank_one():
    ranks = stats.ci_aware_ranks([0.9, 0.88, 0.7, 0.6, 0.5], [math.nan, 0.3, 0.01, 0.001, math.nan])
    assert ranks.tolist() == [1, 1, 3, 4, 5]


def test_friedman_by_hand_and_against_scipy():
    scores = np.array([[0.9, 0.8, 0.7], [0.85, 0.8, 0.6], [0.7, 0.9, 0.5]])
    result = stats.friedman_test(scores, ["a", "b", "c"])
    assert result.mean_ranks == pytest.approx([4 / 3, 5 / 3, 3])
    assert result.statistic == pytest.approx(42 / 9)  # 12N/(k(k+1)) (sum R^2 - k(k+1)^2/4)
    assert result.statistic == pytest.approx(scipy_stats.friedmanchisquare(*scores.T).statistic)
    assert result.iman_davenport_f == pytest.approx(7.0)  # (N-1) chi2 / (N(k-1) - chi2)
    with pytest.raises(ValueError, match=">= 3 datasets"):
        stats.friedman_test(scores[:2], ["a", "b", "c"])


def test_nemenyi_q_matches_demsar_table_5a():
    published = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in published.items():
        cd = stats.nemenyi_critical_difference(k, 10)
        assert cd / math.sqrt(k * (k + 1) / 60) == pytest.approx(q, abs=2e-3)


def test_cliques_join_ranks_closer_than_the_cd():
    assert stats.cliques([1.0, 1.5, 3.0, 3.2], 1.0) == [(0, 1), (2, 3)]
    assert stats.cliques([1.0, 1.8, 2.6], 1.0) == [(0, 1), (1, 2)]
