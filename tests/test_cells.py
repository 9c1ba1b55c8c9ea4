"""Per-nucleus classification: PathoCellBench's scores against sklearn on nuclei classified one by one in
the test, as Kainmueller-Lab/Pathology-Foundation-Model-Benchmark src/benchmark/run/eval.py does."""

from typing import NamedTuple

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

import pannuke_imagemask as pim
from convert import cells

# PathoCellBench's PanNuke labels (Bio-Image-Datasets pannuke_dataset.py mapping_dict), by class name;
# ours are PanNuke's channel + 1.
THEIR_LABEL = {"background": 0, "epithelial": 1, "dead": 2, "connective": 3, "inflammatory": 4, "neoplastic": 5}
OUR_LABEL = {"background": 0, **{name: c + 1 for c, name in enumerate(pim.NUCLEUS_CLASSES)}}
OURS_TO_THEIRS = {OUR_LABEL[name]: THEIR_LABEL[name] for name in OUR_LABEL}
THEIRS_TO_OURS = {t: o for o, t in OURS_TO_THEIRS.items()}


class PatchMaps(NamedTuple):
    """Stand-in for the maps evaluate hands to the metric modules."""

    true_instance: np.ndarray
    true_semantic: np.ndarray
    pred_instance: np.ndarray
    pred_semantic: np.ndarray


def maps(true_instance, true_semantic, pred_semantic):
    true_instance, true_semantic, pred_semantic = (
        np.asarray(a, dtype=np.int64) for a in (true_instance, true_semantic, pred_semantic)
    )
    return PatchMaps(true_instance, true_semantic, (pred_semantic > 0).astype(np.int64), pred_semantic)


def classify_nuclei(patch):
    """(true, predicted) class of each true nucleus, in our labels, as Eval._get_instance_level_labels:
    int() of the mean of their truth labels; the first of the largest per-class means of the
    prediction, taken over their labels 0..5 in order (one-hot predictions: the softmax is the label)."""
    true_labels, pred_labels = [], []
    theirs_true = np.vectorize(OURS_TO_THEIRS.get)(patch.true_semantic)
    theirs_pred = np.vectorize(OURS_TO_THEIRS.get)(patch.pred_semantic)
    for nucleus in sorted(set(np.unique(patch.true_instance).tolist()) - {0}):
        inside = patch.true_instance == nucleus
        true_label = int(theirs_true[inside].mean())
        means = [(theirs_pred[inside] == label).mean() for label in range(6)]
        best = 0
        for label in range(1, 6):
            if means[label] > means[best]:
                best = label
        true_labels.append(THEIRS_TO_OURS[true_label])
        pred_labels.append(THEIRS_TO_OURS[best])
    return true_labels, pred_labels


def expected_scores(patches):
    """compute_metrics_instance_level's numbers of the pooled nuclei, with sklearn."""
    true, pred = [], []
    for patch in patches:
        t, p = classify_nuclei(patch)
        true += t
        pred += p
    true, pred = np.array(true, dtype=np.int64), np.array(pred, dtype=np.int64)
    labels = sorted((set(true.tolist()) | set(pred.tolist())) - {0})
    if not labels:
        return {}
    result = {
        "cells_f1_macro": f1_score(true, pred, labels=labels, average="macro", zero_division=0),
        "cells_precision_macro": precision_score(true, pred, labels=labels, average="macro", zero_division=0),
        "cells_recall_macro": recall_score(true, pred, labels=labels, average="macro", zero_division=0),
        "cells_f1_micro": f1_score(true, pred, average="micro", zero_division=0),
    }
    for name in pim.NUCLEUS_CLASSES:
        c = OUR_LABEL[name]
        result[f"cells_f1_{name}"] = (
            f1_score(true, pred, labels=[c], average="micro", zero_division=0) if c in labels else np.nan
        )
    return result


def assert_close(ours, expected):
    assert set(ours) == set(cells.REFERENCES)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9, rel=0, nan_ok=True), key


def score(patches, classified=True):
    states = np.stack([cells.patch_state(p) for p in patches])
    return {key: value.item() for key, value in cells.reduce(states[None], classified).items()}


def blocks(rng, shape=(24, 24), size=4, fill=0.7):
    """An instance map of square nuclei (ids with gaps, some squares touching)."""
    instance = np.zeros(shape, dtype=np.int64)
    label = 0
    for y in range(0, shape[0], size):
        for x in range(0, shape[1], size):
            label += int(rng.integers(1, 3))
            if rng.random() < fill:
                instance[y : y + size, x : x + size] = label
    return instance


def random_patch(rng, mixed_truth=False, pred_classes=range(6)):
    instance = blocks(rng)
    if mixed_truth:
        semantic = np.where(instance > 0, rng.integers(1, 6, size=instance.shape), 0)
    else:
        classes = rng.integers(1, 6, size=instance.max() + 1)
        semantic = np.where(instance > 0, classes[instance], 0)
    return maps(instance, semantic, rng.choice(list(pred_classes), size=instance.shape))


def edge_cases():
    rng = np.random.default_rng(26)
    instance = blocks(rng)
    semantic = np.where(instance > 0, (instance % 5) + 1, 0)
    no_nuclei = np.zeros((8, 8), dtype=np.int64)
    return {
        "random": [random_patch(rng) for _ in range(3)],
        "mixed truth": [random_patch(rng, mixed_truth=True) for _ in range(2)],
        "predicted background or one class": [random_patch(rng, pred_classes=[0, 3]) for _ in range(2)],
        "class predicted, absent from truth": [maps(instance, np.where(instance > 0, 1, 0), semantic)],
        "empty prediction": [maps(instance, semantic, np.zeros_like(semantic))],
        "perfect prediction": [maps(instance, semantic, semantic)],
        "no nuclei with nuclei predicted": [maps(no_nuclei, no_nuclei, no_nuclei + 2), random_patch(rng)],
    }


@pytest.mark.parametrize("case", list(edge_cases()))
def test_pooled_scores_equal_sklearn_on_the_nuclei(case):
    patches = edge_cases()[case]
    for patch in patches:
        t, p = classify_nuclei(patch)
        expected = np.zeros(36)
        np.add.at(expected, np.array(t, dtype=np.int64) * 6 + np.array(p, dtype=np.int64), 1)
        assert cells.patch_state(patch).tolist() == expected.tolist()
    assert_close(score(patches), expected_scores(patches))


def test_ties_and_mixed_nuclei_follow_pathocellbench_numbering():
    instance = np.array([[1, 1, 2, 2, 3, 3, 4, 4]])
    # Nucleus 1: two pixels each of neoplastic (ours 1, theirs 5) and epithelial (ours 5, theirs 1).
    # Nucleus 2: background against neoplastic. Nucleus 3: one inflammatory, one connective pixel.
    # Nucleus 4: truth neoplastic and inflammatory (theirs 5 and 4: mean 4.5, int 4, inflammatory).
    true = np.array([[1, 1, 2, 2, 3, 3, 1, 2]])
    pred = np.array([[1, 5, 0, 1, 2, 3, 2, 2]])
    true_class, pred_class = cells.nucleus_classes(maps(instance, true, pred))
    assert true_class.tolist() == [1, 2, 3, 2]
    assert pred_class.tolist() == [5, 0, 3, 2]
    assert classify_nuclei(maps(instance, true, pred)) == (true_class.tolist(), pred_class.tolist())


def test_without_nuclei_or_classes_every_score_is_nan():
    empty = np.zeros((8, 8), dtype=np.int64)
    assert all(np.isnan(v) for v in score([maps(empty, empty, empty + 1)]).values())
    patch = edge_cases()["random"][0]
    assert all(np.isnan(v) for v in score([patch], classified=False).values())


def tissue_sums(states, tissues, weights):
    names = sorted(set(tissues))
    sums = np.zeros((len(weights), len(names), states.shape[1]))
    for r, row in enumerate(weights):
        for i, w in enumerate(row):
            sums[r, names.index(tissues[i])] += w * states[i]
    return sums


def test_replicates_equal_the_scores_of_the_repeated_patches():
    rng = np.random.default_rng(5)
    cases = edge_cases()
    patches = cases["random"] + cases["mixed truth"] + cases["class predicted, absent from truth"]
    tissues = ["a", "b", "a", "c", "b", "c"]
    weights = [rng.integers(0, 4, size=len(patches)) for _ in range(5)] + [np.ones(len(patches), dtype=int)]
    weights[0][:] = [0, 0, 0, 0, 0, 2]  # one class of truth only
    states = np.stack([cells.patch_state(p) for p in patches])
    reduced = cells.reduce(tissue_sums(states, tissues, weights))
    assert all(value.shape == (len(weights),) for value in reduced.values())
    for r, row in enumerate(weights):
        repeated = [p for p, w in zip(patches, row) for _ in range(w)]
        assert_close({key: value[r] for key, value in reduced.items()}, expected_scores(repeated))


def test_the_fake_fold_scores_equal_sklearn(part1_patches):
    """The builder's real-shaped masks: another patch's classes on the nuclei, classes rotated on a
    shifted map, a perfect and an empty prediction."""
    order = sorted(part1_patches)
    semantic = [part1_patches[i][1].astype(np.int64) for i in order]
    instance = [part1_patches[i][2].astype(np.int64) for i in order]
    patches = []
    for i in order:
        if i % 4 == 0:
            pred = semantic[(i + 1) % len(order)]
        elif i % 4 == 1:
            shifted = np.roll(semantic[i], (2, -3), axis=(0, 1))
            pred = np.where(shifted > 0, shifted % 5 + 1, 0)
        elif i % 4 == 2:
            pred = semantic[i]
        else:
            pred = np.zeros_like(semantic[i])
        patches.append(maps(instance[i], semantic[i], pred))
    tissues = [part1_patches[i][4] for i in order]
    states = np.stack([cells.patch_state(p) for p in patches])
    assert states.sum() == sum(len(part1_patches[i][3]) for i in order)  # every true nucleus, once
    weights = [np.ones(len(patches), dtype=int), np.random.default_rng(3).integers(0, 3, size=len(patches))]
    reduced = cells.reduce(tissue_sums(states, tissues, weights))
    for r, row in enumerate(weights):
        repeated = [p for p, w in zip(patches, row) for _ in range(w)]
        assert_close({key: value[r] for key, value in reduced.items()}, expected_scores(repeated))
