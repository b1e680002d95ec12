import numpy as np
import pytest

from pipeline.evaluation.metrics import roc_auc


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


def _random_case(seed, n=300, ties=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + labels
    return labels, (np.round(scores, 1) if ties else scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_scikit_learn(seed):
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    from pipeline.evaluation import metrics

    for ties in (True, False):
        y, s = _random_case(seed, ties=ties)
        assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert metrics.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        precision, recall, thresholds = precision_recall_curve(y, s)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
        best = int(np.argmax(f1[:-1]))  # sklearn's last point (recall 0) has no threshold
        ours, threshold = metrics.f1_max(y, s)
        assert ours == pytest.approx(f1[best], abs=1e-12) and threshold == thresholds[best]
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        our_fpr, our_tpr, _ = metrics.roc_curve(y, s)
        np.testing.assert_allclose(our_fpr, fpr) and np.testing.assert_allclose(our_tpr, tpr)


def test_f1_max_threshold_is_inclusive():
    from pipeline.evaluation.metrics import f1_max

    # at t=0.4 (score >= t): tp=2 fp=0 fn=0 -> F1 1
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.4, 0.9]) == (1.0, 0.4)
    assert f1_max([1, 0, 1], [0.9, 0.5, 0.1])[0] == pytest.approx(0.8)  # t=0.1: P 2/3, R 1 -> 0.8


def test_aupro_hand_worked_two_regions():
    from pipeline.evaluation.metrics import aupro, pro_curve

    mask = np.array([[1, 1, 0, 0],
                     [0, 0, 0, 0],
                     [0, 0, 0, 1]])
    amap = np.array([[0.9, 0.5, 0.1, 0.1],
                     [0.1, 0.1, 0.1, 0.1],
                     [0.1, 0.1, 0.6, 0.7]])
    # regions (8-connectivity): A = {(0,0),(0,1)} (2 px), B = {(2,3)} (1 px); 9 normal pixels.
    # t=0.9: A 1/2, B 0 -> PRO .25, FPR 0      t=0.7: B 1 -> PRO (.5+1)/2 = .75, FPR 0
    # t=0.6: a normal pixel -> FPR 1/9          t=0.5: A full -> PRO 1, FPR 1/9     t=0.1: FPR 1
    fpr, pro = pro_curve([mask], [amap])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 9, 1 / 9, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.75, 0.75, 1, 1])
    # up to 0.3: .75 * 1/9 + 1 * (0.3 - 1/9) = 49/180; / 0.3 = 49/54
    assert aupro([mask], [amap]) == pytest.approx(49 / 54)
    # up to 0.05: the point at 0.05 is interpolated on the flat stretch (PRO .75): .75 * .05 / .05
    assert aupro([mask], [amap], max_fpr=0.05) == pytest.approx(0.75)
    # regions weigh the same whatever their size: a pixel-weighted curve would give A 2/3 of the weight
    assert aupro([mask], [np.where(mask == 1, 1.0, 0.0)]) == 1.0


def test_aupro_over_several_images_pools_regions_and_normal_pixels():
    from pipeline.evaluation.metrics import aupro

    # image 1: one region found perfectly; image 2: no region, a normal pixel scores highest of all
    m1, a1 = np.array([[1, 0], [0, 0]]), np.array([[0.8, 0.0], [0.0, 0.0]])
    m2, a2 = np.zeros((2, 2), int), np.array([[0.9, 0.0], [0.0, 0.0]])
    # t=.9: FPR 1/7, PRO 0; t=.8: FPR 1/7, PRO 1; t=0: FPR 1. Area to .3: (.3 - 1/7) * 1 / .3
    assert aupro([m1, m2], [a1, a2]) == pytest.approx((0.3 - 1 / 7) / 0.3)
    with pytest.raises(ValueError, match="region"):
        aupro([m2], [a2])


def test_resize_nearest_keeps_values():
    from pipeline.evaluation.metrics import resize_nearest

    mask = np.array([[0, 1], [1, 0]], dtype=bool)
    np.testing.assert_array_equal(resize_nearest(mask, (4, 4)), np.kron(mask, np.ones((2, 2), bool)))
    assert resize_nearest(np.kron(mask, np.ones((3, 3), bool)), (2, 2)).tolist() == mask.tolist()
