"""NT-Xent and SupCon against values computed by hand from their defining formulas."""
from __future__ import annotations

import math

import pytest
import torch

from pretrained.ssl.losses import nt_xent, supcon


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _hand_loss(views, positives_of, t):
    """Mean over anchors i of -1/|P(i)| sum_p log(exp(s_ip/t) / sum_{a != i} exp(s_ia/t)), in plain Python."""
    total = 0.0
    for i, anchor in enumerate(views):
        denominator = sum(math.exp(_cos(anchor, other) / t) for a, other in enumerate(views) if a != i)
        terms = [math.log(math.exp(_cos(anchor, views[p]) / t) / denominator) for p in positives_of(i)]
        total += -sum(terms) / len(terms)
    return total / len(views)


def test_nt_xent_matches_hand_computation():
    z1 = [[1.0, 0.0], [0.0, 2.0]]
    z2 = [[3.0, 1.0], [-1.0, 1.0]]
    views = z1 + z2  # anchors 0, 1 (view 1) and 2, 3 (view 2); positive of i is i +- 2
    expected = _hand_loss(views, lambda i: [(i + 2) % 4], t=0.5)
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), temperature=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # and a value checked independently: anchor 0 = (1, 0) against (0, 1), (3, 1)/sqrt10, (-1, 1)/sqrt2
    s_pos, s_neg1, s_neg2 = 3 / math.sqrt(10), 0.0, -1 / math.sqrt(2)
    anchor0 = -math.log(math.exp(s_pos / 0.5) / sum(math.exp(s / 0.5) for s in (s_pos, s_neg1, s_neg2)))
    per_anchor = torch.nn.functional.cross_entropy(
        torch.tensor([[s_neg1, s_pos, s_neg2]]) / 0.5, torch.tensor([1]))
    assert per_anchor.item() == pytest.approx(anchor0, rel=1e-6)


def test_supcon_equals_nt_xent_when_every_label_is_unique():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    for t in (0.1, 0.5, 1.0):
        assert supcon(z1, z2, torch.arange(6), t).item() == pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-6)


def test_supcon_with_shared_labels_matches_hand_computation():
    z1 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 1.0]]
    z2 = [[0.9, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.2, 1.0]]
    labels = [0, 0, 1]
    views, both = z1 + z2, labels + labels
    positives = lambda i: [p for p in range(6) if p != i and both[p] == both[i]]
    expected = _hand_loss(views, positives, t=0.2)
    got = supcon(torch.tensor(z1), torch.tensor(z2), torch.tensor(labels), temperature=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() != pytest.approx(nt_xent(torch.tensor(z1), torch.tensor(z2), 0.2).item(), rel=1e-3)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_losses_take_any_batch_size(n):
    """No fixed-size target buffer (DERMA's bug): every batch size works, a single pair has no negatives."""
    generator = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 4, generator=generator), torch.randn(n, 4, generator=generator)
    loss = nt_xent(z1, z2, 0.5)
    assert torch.isfinite(loss)
    if n == 1:
        assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(supcon(z1, z2, torch.zeros(n, dtype=torch.long), 0.5))


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(2, 3), torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        nt_xent(torch.ones(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="labels"):
        supcon(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(3, dtype=torch.long))
