import numpy as np
import pytest

from pipeline.metrics import roc_auc


def brute_force_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(size=400) + labels, 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0


def test_roc_auc_needs_both_classes():
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.2, 0.3])
