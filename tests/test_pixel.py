"""Pixel scores: THUNDER's against sklearn itself on the pooled pixels, PFM-DenseBench's against a
plain implementation of its SegmentationMetrics (lingxitong/PFM_Segmentation utils/metrics.py)."""

from typing import NamedTuple

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
)

from convert import pixel

CLASS_NAMES = ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]


class PatchMaps(NamedTuple):
    """Stand-in for the maps evaluate hands to the metric modules."""

    true_instance: np.ndarray
    true_semantic: np.ndarray
    pred_instance: np.ndarray
    pred_semantic: np.ndarray


def maps(true_semantic, pred_semantic):
    true_semantic = np.asarray(true_semantic, dtype=np.int64)
    pred_semantic = np.asarray(pred_semantic, dtype=np.int64)
    none = np.zeros_like(true_semantic)
    return PatchMaps(none, true_semantic, none, pred_semantic)


def random_patch(rng, true_classes=range(6), pred_classes=range(6), shape=(24, 20)):
    return maps(rng.choice(list(true_classes), size=shape), rng.choice(list(pred_classes), size=shape))


def edge_cases():
    """{name: [patches]}: the sets of labels sklearn and PFM treat differently."""
    rng = np.random.default_rng(26)
    background = np.zeros((16, 16), dtype=np.int64)
    truth = rng.choice(6, size=(16, 16))
    nuclei = rng.choice([0, 1, 2], size=(16, 16))
    return {
        "random": [random_patch(rng) for _ in range(3)],
        "class absent from both": [random_patch(rng, [0, 1, 2, 3, 5], [0, 1, 2, 3, 5]) for _ in range(2)],
        "class absent from truth only": [random_patch(rng, [0, 1, 2], [0, 1, 2, 4]) for _ in range(2)],
        "class absent from prediction only": [random_patch(rng, [0, 2, 3], [0, 2]) for _ in range(2)],
        "empty prediction": [maps(truth, background), maps(nuclei, background)],
        "all-background patch": [maps(background, nuclei), maps(truth, truth)],
        "only background anywhere": [maps(background, background)],
        "perfect prediction": [maps(truth, truth), maps(nuclei, nuclei)],
        "a class never hit": [maps(nuclei, np.where(nuclei == 2, 1, nuclei))],
        "no pixel right": [maps(background, np.ones_like(background))],
    }


def pooled(patches, collapse=False):
    """The flattened pixels of every patch, truth and prediction, as THUNDER hands them to sklearn."""
    true = np.concatenate([p.true_semantic.ravel() for p in patches])
    pred = np.concatenate([p.pred_semantic.ravel() for p in patches])
    return ((true > 0).astype(np.int64), pred) if collapse else (true, pred)


def pfm_reference(true, pred, num_classes):
    """SegmentationMetrics.update then compute, in float64 and without its 1e-8 guards (which only
    turn 0 / 0 into 0 and shift the rest by 1e-8 of a pixel); the class loops written out."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    tp = [float(cm[c, c]) for c in range(num_classes)]
    fp = [float(cm[:, c].sum()) - tp[c] for c in range(num_classes)]
    fn = [float(cm[c, :].sum()) - tp[c] for c in range(num_classes)]
    total = float(cm.sum())
    iou, dice, precision, recall, f1 = [], [], [], [], []
    for c in range(num_classes):
        valid = tp[c] + fp[c] + fn[c] > 0
        iou.append(tp[c] / (tp[c] + fp[c] + fn[c]) if valid else 0.0)
        dice.append(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) if valid else 0.0)
        precision.append(tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] > 0 else 0.0)
        recall.append(tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] > 0 else 0.0)
        pr = precision[c] + recall[c]
        f1.append(2 * precision[c] * recall[c] / pr if pr > 0 else 0.0)

    def mean(values, keep):
        kept = [v for v, k in zip(values, keep) if k]
        return sum(kept) / len(kept) if kept else 0.0

    valid = [tp[c] + fp[c] + fn[c] > 0 for c in range(num_classes)]
    in_truth = [tp[c] + fn[c] > 0 for c in range(num_classes)]
    result = {
        "pfm_pixel_accuracy": sum(tp) / total,
        "pfm_miou": mean(iou, valid),
        "pfm_mdice": mean(dice, valid),
        "pfm_fwiou": sum((tp[c] + fn[c]) / total * iou[c] for c in range(num_classes)),
        "pfm_mean_accuracy": mean(recall, in_truth),
        "pfm_mean_precision": mean(precision, [tp[c] + fp[c] > 0 for c in range(num_classes)]),
        "pfm_mean_f1": mean(f1, [precision[c] + recall[c] > 0 for c in range(num_classes)]),
    }
    names = CLASS_NAMES if num_classes == 6 else ["background", "nucleus"]
    for c, name in enumerate(names):
        result[f"pfm_iou_{name}"] = iou[c]
        result[f"pfm_dice_{name}"] = dice[c]
    return result


def sklearn_scores(true, pred):
    """THUNDER's compute_metrics: sklearn's calls as it makes them (zero_division left at "warn")."""
    return {
        "thunder_accuracy": accuracy_score(true, pred),
        "thunder_balanced_accuracy": balanced_accuracy_score(true, pred),
        "thunder_f1_macro": f1_score(true, pred, average="macro"),
        "thunder_jaccard_macro": jaccard_score(true, pred, average="macro"),
    }


def score(patches, classified=True):
    states = np.stack([pixel.patch_state(p) for p in patches])
    return {key: value.item() for key, value in pixel.reduce(states[None], classified).items()}


def assert_close(ours, expected):
    assert set(expected) <= set(ours)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9, rel=0), key


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn warns of labels only on one side
@pytest.mark.parametrize("case", list(edge_cases()))
def test_pooled_scores_equal_sklearn_and_pfm(case):
    patches = edge_cases()[case]
    true, pred = pooled(patches)
    for p in patches:
        expected = confusion_matrix(p.true_semantic.ravel(), p.pred_semantic.ravel(), labels=range(6)).ravel()
        assert pixel.patch_state(p).tolist() == expected.tolist()
    ours = score(patches)
    assert set(ours) == {k for k in pixel.REFERENCES if not k.endswith("_nucleus")}
    assert_close(ours, sklearn_scores(true, pred))
    assert_close(ours, pfm_reference(true, pred, 6))
    # sklearn as a second referee of PFM's class sets: its default labels are truth or prediction.
    assert ours["pfm_miou"] == pytest.approx(jaccard_score(true, pred, average="macro"), abs=1e-9)
    assert ours["pfm_mdice"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-9)
    assert ours["pfm_mean_accuracy"] == pytest.approx(balanced_accuracy_score(true, pred), abs=1e-9)
    per_class_iou = jaccard_score(true, pred, labels=range(6), average=None, zero_division=0)
    per_class_dice = f1_score(true, pred, labels=range(6), average=None, zero_division=0)
    for c, name in enumerate(CLASS_NAMES):
        assert ours[f"pfm_iou_{name}"] == pytest.approx(per_class_iou[c], abs=1e-9)
        assert ours[f"pfm_dice_{name}"] == pytest.approx(per_class_dice[c], abs=1e-9)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", list(edge_cases()))
def test_class_agnostic_predictions_score_background_against_nucleus(case):
    patches = [maps(p.true_semantic, (p.pred_semantic > 0).astype(np.int64)) for p in edge_cases()[case]]
    true, pred = pooled(patches, collapse=True)
    ours = score(patches, classified=False)
    assert set(ours) == {k for k in pixel.REFERENCES if not any(k.endswith(n) for n in CLASS_NAMES[1:])}
    assert_close(ours, sklearn_scores(true, pred))
    assert_close(ours, pfm_reference(true, pred, 2))


def test_a_class_never_hit_drops_out_of_pfm_mean_f1_only():
    (patch,) = edge_cases()["a class never hit"]
    ours = score([patch])
    # Classes 0, 1, 2 in truth; class 2 predicted nowhere: its Dice 0 counts in mDice, not in Mean_F1.
    assert ours["pfm_dice_inflammatory"] == 0.0
    dice = [ours[f"pfm_dice_{name}"] for name in CLASS_NAMES[:2]]
    assert ours["pfm_mean_f1"] == pytest.approx(sum(dice) / 2, abs=1e-12)
    assert ours["pfm_mdice"] == pytest.approx(sum(dice) / 3, abs=1e-12)


def test_no_pixel_right():
    # Truth all background, prediction all class 1: sklearn's macro over {0, 1} is 0; PFM's Mean_F1 has
    # no class with TP > 0 and is 0 by its rule.
    ours = score(edge_cases()["no pixel right"])
    assert ours["thunder_f1_macro"] == 0.0 and ours["pfm_mean_f1"] == 0.0 and ours["pfm_fwiou"] == 0.0


def tissue_sums(states, tissues, weights):
    """(R, T, C): per replicate and tissue, the weighted sum of the tissue's patch states."""
    names = sorted(set(tissues))
    sums = np.zeros((len(weights), len(names), states.shape[1]))
    for r, row in enumerate(weights):
        for i, w in enumerate(row):
            sums[r, names.index(tissues[i])] += w * states[i]
    return sums


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_replicates_equal_the_scores_of_the_repeated_patches():
    rng = np.random.default_rng(7)
    cases = edge_cases()
    patches = [p for name in ("random", "class absent from truth only", "empty prediction") for p in cases[name]]
    tissues = ["a", "b", "a", "c", "b", "c", "a"]
    weights = [rng.integers(0, 4, size=len(patches)) for _ in range(5)] + [np.ones(len(patches), dtype=int)]
    weights[0][:] = [0, 3, 0, 1, 0, 2, 1]
    states = np.stack([pixel.patch_state(p) for p in patches])
    for classified in (True, False):
        if not classified:
            patches = [maps(p.true_semantic, (p.pred_semantic > 0).astype(np.int64)) for p in patches]
            states = np.stack([pixel.patch_state(p) for p in patches])
        reduced = pixel.reduce(tissue_sums(states, tissues, weights), classified)
        assert all(value.shape == (len(weights),) for value in reduced.values())
        for r, row in enumerate(weights):
            repeated = [p for p, w in zip(patches, row) for _ in range(w)]
            true, pred = pooled(repeated, collapse=not classified)
            ours = {key: value[r] for key, value in reduced.items()}
            assert_close(ours, sklearn_scores(true, pred))
            assert_close(ours, pfm_reference(true, pred, 6 if classified else 2))


def fake_predictions(patches):
    """Predictions of the fake fold's patches from its real-shaped masks: another patch's nuclei, shifted
    nuclei with classes rotated, a perfect patch, an empty one."""
    semantic = [patches[i][1].astype(np.int64) for i in sorted(patches)]
    preds = []
    for i, truth in enumerate(semantic):
        if i % 4 == 0:
            preds.append(semantic[(i + 1) % len(semantic)])
        elif i % 4 == 1:
            shifted = np.roll(truth, (3, -2), axis=(0, 1))
            preds.append(np.where(shifted > 0, shifted % 5 + 1, 0) if i % 8 == 1 else shifted)
        elif i % 4 == 2:
            preds.append(truth.copy())
        else:
            preds.append(np.zeros_like(truth))
    return [maps(truth, pred) for truth, pred in zip(semantic, preds)]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_fake_fold_scores_equal_sklearn_and_pfm(part1_patches):
    patches = fake_predictions(part1_patches)
    tissues = [part1_patches[i][4] for i in sorted(part1_patches)]
    states = np.stack([pixel.patch_state(p) for p in patches])
    rng = np.random.default_rng(3)
    weights = [np.ones(len(patches), dtype=int), rng.integers(0, 3, size=len(patches))]
    reduced = pixel.reduce(tissue_sums(states, tissues, weights))
    for r, row in enumerate(weights):
        true, pred = pooled([p for p, w in zip(patches, row) for _ in range(w)])
        ours = {key: value[r] for key, value in reduced.items()}
        assert_close(ours, sklearn_scores(true, pred))
        assert_close(ours, pfm_reference(true, pred, 6))
