"""Detection and classification F1: HoVer-Net's run_nuclei_type_stat, against a plain implementation of it."""

import math

import f1_oracle
import metric_helpers as mh
import numpy as np
import pytest
from pannuke_fixtures import raw_fold

import pannuke_imagemask as pim
from convert import detection
from convert.predictions import PatchPrediction

CLASS = {name: k + 1 for k, name in enumerate(pim.NUCLEUS_CLASSES)}  # HoVer-Net type ids


def counts(true_xy, true_types, pred_xy, pred_types, radius=12):
    return dict(zip(detection.COUNT_COLUMNS, detection.pair_counts(true_xy, true_types, pred_xy, pred_types, radius)))


def summary(patches, classified=True, radius=12):
    total = [detection.pair_counts(*patch, radius) for patch in patches]
    return detection.summarize(total, classified, radius)


def same(a, b):
    """Exactly equal, NaN equal to NaN: the counts are integers and the formulas HoVer-Net's."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_equal_to_oracle(patches, radius=12):
    ours = summary(patches, radius=radius)
    theirs = f1_oracle.type_stats(patches, radius)
    for key in ("f1", "precision", "recall", "type_accuracy"):
        assert same(ours["detection"][key], theirs[key]), key
    for name, t in CLASS.items():
        assert same(ours["f1_per_class"][name], theirs["f1_per_type"][t]), name
    assert ours["detection"]["radius"] == radius


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------------------------


def test_a_pair_at_exactly_the_radius_counts_and_just_beyond_does_not():
    assert counts([[10, 10]], [1], [[22, 10]], [1])["pairs"] == 1
    beyond = counts([[10, 10]], [1], [[22.5, 10]], [1])
    assert (beyond["pairs"], beyond["unpaired_pred"], beyond["unpaired_true"]) == (0, 1, 1)
    assert counts([[10, 10]], [1], [[22.5, 10]], [1], radius=12.5)["pairs"] == 1
    assert counts([[10, 10]], [1], [[10, 10]], [1], radius=0)["pairs"] == 1


def test_points_are_rounded_to_float32_first_as_hovernet_reads_them():
    # 12 + 1e-9 is 12 in float32: the pair is at exactly the radius there.
    assert counts([[0, 0]], [1], [[12 + 1e-9, 0]], [1])["pairs"] == 1
    assert counts([[0, 0]], [1], [[12 + 1e-5, 0]], [1])["pairs"] == 0


def test_the_radius_filters_the_optimal_assignment_afterwards_it_does_not_constrain_it():
    # (0, 0) and (11, 12) are 16.3 apart: the assignment of least total distance pairs them, and (11, 0)
    # with (10, 0), rather than the two pairs within 12 px (10 + 12 > 1 + 16.3). The far pair is dropped.
    true = [[0, 0], [11, 0]]
    pred = [[10, 0], [11, 12]]
    got = counts(true, [1, 1], pred, [1, 1])
    assert (got["pairs"], got["unpaired_pred"], got["unpaired_true"]) == (1, 1, 1)
    assert summary([(true, [1, 1], pred, [1, 1])])["detection"]["f1"] == 0.5


def test_a_patch_without_true_nuclei_gets_a_dummy_point_at_the_origin_that_can_pair():
    near = counts([], [], [[5, 5]], [2])
    assert (near["pairs"], near["unpaired_pred"], near["unpaired_true"], near["same_type"]) == (1, 0, 0, 0)
    assert near["inflammatory_fp"] == 1  # predicted inflammatory, paired with the dummy's type 0
    far = counts(np.zeros((0, 2)), [], [[100, 100]], [2])
    assert (far["pairs"], far["unpaired_pred"], far["unpaired_true"]) == (0, 1, 1)  # the dummy is a miss
    assert far["inflammatory_fp_d"] == 1 and sum(far[f"{n}_fn_d"] for n in CLASS) == 0


def test_a_patch_without_predictions_gets_a_dummy_too_and_two_empty_sides_make_one_right_pair():
    got = counts([[3, 4]], [1], [], [])
    assert (got["pairs"], got["unpaired_pred"], got["unpaired_true"], got["same_type"]) == (1, 0, 0, 0)
    assert got["neoplastic_fn"] == 1
    both = counts([], [], [], [])
    assert (both["pairs"], both["unpaired_pred"], both["unpaired_true"], both["same_type"]) == (1, 0, 0, 1)
    assert sum(both[f"{n}_{c}"] for n in CLASS for c in detection.CLASS_COUNTS) == 0
    result = summary([([], [], [], [])])
    assert result["detection"]["f1"] == 1 and result["detection"]["type_accuracy"] == 1
    assert all(math.isnan(v) for v in result["f1_per_class"].values())


def test_class_f1_weights_2_2_1_1_and_a_class_absent_from_truth():
    true = [[0, 0], [50, 0], [100, 0], [150, 150]]
    true_types = [1, 1, 2, 3]
    pred = [[1, 0], [51, 0], [101, 0], [250, 250]]
    pred_types = [1, 2, 2, 4]  # the last is dead, a class absent from the truth, and pairs with nothing
    result = summary([(true, true_types, pred, pred_types)])
    assert result["detection"] == {
        "f1": 6 / 8,
        "precision": 3 / 4,
        "recall": 3 / 4,
        "type_accuracy": 2 / 3,
        "radius": 12.0,
    }
    assert result["f1_per_class"]["neoplastic"] == 2 / (2 + 2 * 1)  # one right, one called inflammatory
    assert result["f1_per_class"]["inflammatory"] == 2 / (2 + 2 * 1)  # one right, one neoplastic called it
    assert result["f1_per_class"]["connective"] == 0 / 1  # its only nucleus unpaired
    assert result["f1_per_class"]["dead"] == 0 / 1  # absent from the truth, predicted once: 0, not n/a
    assert math.isnan(result["f1_per_class"]["epithelial"])  # absent from both
    assert_equal_to_oracle([(true, true_types, pred, pred_types)])


def test_counts_are_pooled_over_patches_not_averaged():
    perfect = ([[10, 10]], [1], [[10, 10]], [1])
    missed = ([[10, 10], [40, 40], [80, 80]], [1, 1, 1], [[200, 200]], [1])
    assert summary([perfect, missed])["detection"]["f1"] == 2 * 1 / (2 * 1 + 1 + 3)


def test_without_classes_type_accuracy_and_class_f1_are_not_available():
    patches = [([[10, 10], [40, 40]], [1, 3], [[11, 10]], [0])]
    result = summary(patches, classified=False)
    assert result["detection"]["f1"] == 2 / 3 and result["detection"]["recall"] == 1 / 2
    assert math.isnan(result["detection"]["type_accuracy"])
    assert all(math.isnan(v) for v in result["f1_per_class"].values())


def test_no_patch_at_all_is_not_available_everywhere():
    result = detection.summarize(np.zeros((0, len(detection.COUNT_COLUMNS))))
    assert all(math.isnan(result["detection"][k]) for k in ("f1", "precision", "recall", "type_accuracy"))


# ---------------------------------------------------------------------------------------------
# Randomised points against the oracle.
# ---------------------------------------------------------------------------------------------


def random_patches(rng, n):
    """Truth points and predictions near them (moved, dropped, retyped, spurious), some sides empty."""
    patches = []
    for k in range(n):
        count = 0 if k % 9 == 0 else int(rng.integers(1, 40))
        true = rng.uniform(0, 256, size=(count, 2))
        true_types = rng.integers(1, 6, size=count)
        kept = rng.random(count) > 0.2
        pred = true[kept] + rng.normal(0, 6, size=(int(kept.sum()), 2))
        pred_types = np.where(rng.random(len(pred)) < 0.7, true_types[kept], rng.integers(0, 6, size=len(pred)))
        spurious = int(rng.integers(0, 5))
        pred = np.concatenate([pred, rng.uniform(0, 256, size=(spurious, 2))])
        pred_types = np.concatenate([pred_types, rng.integers(0, 6, size=spurious)])
        if k % 7 == 3:
            pred, pred_types = pred[:0], pred_types[:0]
        if k % 11 == 5:  # points near the origin: where the dummy sits
            pred = np.concatenate([pred, rng.uniform(0, 9, size=(2, 2))])
            pred_types = np.concatenate([pred_types, [1, 0]])
        patches.append((true, true_types, pred, pred_types))
    return patches


@pytest.mark.parametrize("radius", [12, 6, 30])
def test_pooled_scores_equal_the_oracle_on_randomised_points(radius):
    assert_equal_to_oracle(random_patches(np.random.default_rng(radius), 80), radius)


def test_true_nuclei_are_the_builders_instance_mask_at_the_mean_of_their_pixels(three_folds):
    for fold, layout, root in ((1, "kaggle", three_folds), (3, "official", three_folds)):
        _, masks, _ = raw_fold(root, fold, layout)
        for index in range(len(masks)):
            ids = pim.mask_to_ids(np.asarray(masks[index]))
            points, types = mh.binary_points(ids)
            expected_points, expected_types = f1_oracle.truth_nuclei(masks[index])
            np.testing.assert_array_equal(types, expected_types)
            np.testing.assert_array_equal(points, expected_points)


def test_score_patch_pairs_the_truth_with_the_predicted_points(three_folds):
    _, masks, _ = raw_fold(three_folds, 1, "kaggle")
    rng = np.random.default_rng(3)
    patches, ours = [], []
    for index in range(len(masks)):
        ids = pim.mask_to_ids(np.asarray(masks[index]))
        true_points, true_types = f1_oracle.truth_nuclei(masks[index])
        pred_points = true_points + rng.normal(0, 5, size=true_points.shape)
        pred_types = np.where(rng.random(len(true_types)) < 0.8, true_types, 3)
        prediction = PatchPrediction(ids.astype(np.int64), pred_points, pred_types)
        ours.append(mh.score_patch(ids, prediction, 12)[1])
        patches.append((true_points, true_types, pred_points, pred_types))
    result = detection.summarize(ours)
    expected = f1_oracle.type_stats(patches)
    assert result["detection"]["f1"] == expected["f1"] < 1
    assert result["detection"]["type_accuracy"] == expected["type_accuracy"] < 1
    for name, t in CLASS.items():
        assert same(result["f1_per_class"][name], expected["f1_per_type"][t])


def test_a_prediction_without_points_is_scored_on_its_channels_binary_map(three_folds):
    _, masks, _ = raw_fold(three_folds, 1, "kaggle")
    patches, ours = [], []
    for index in range(len(masks)):
        ids = pim.mask_to_ids(np.asarray(masks[index]))
        pred = np.roll(ids, (index % 5, 3), axis=(0, 1)).astype(np.int64)
        pred[..., 2][pred[..., 0] != 0] = 9  # nuclei covered by a later channel, wholly or partly
        ours.append(mh.score_patch(ids, PatchPrediction(pred, None, None), 12)[1])
        patches.append((*f1_oracle.truth_nuclei(masks[index]), *f1_oracle.binary_nuclei(pred)))
    np.testing.assert_array_equal(np.sum(ours, axis=0), np.sum([detection.pair_counts(*p) for p in patches], axis=0))
    expected = f1_oracle.type_stats(patches)
    assert detection.summarize(ours)["detection"]["f1"] == expected["f1"] < 1
