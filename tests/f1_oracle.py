"""A plain detection and classification F1, written from HoVer-Net's compute_stats.py run_nuclei_type_stat.

Not from convert.detection: every patch's points are concatenated with index offsets first, as HoVer-Net
does, and every count is taken from the concatenated arrays at the end. The test oracle of the F1.
"""

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

import pannuke_imagemask as pim


def truth_nuclei(mask):
    """(points (N, 2) (x, y), types (N,)) of the builder's instance_mask: one nucleus per instance id."""
    _, instance, nuclei = pim.ids_to_labels(pim.mask_to_ids(np.asarray(mask)))
    points, types = [], []
    for nucleus in nuclei:
        ys, xs = np.nonzero(instance == nucleus["id"])
        points.append([xs.mean(), ys.mean()])
        types.append(nucleus["label"] + 1)
    return np.array(points, dtype=np.float64).reshape(-1, 2), np.array(types, dtype=np.int64)


def binary_nuclei(channels):
    """(points, types) of (H, W, 5) class channels collapsed as the binary map: later channels on top."""
    points, types = [], []
    top = np.full(channels.shape[:2], -1)
    for c in range(5):
        top[channels[..., c] != 0] = c
    for c in range(5):
        for value in sorted(set(channels[..., c].ravel().tolist()) - {0}):
            ys, xs = np.nonzero((channels[..., c] == value) & (top == c))
            if len(xs):
                points.append([xs.mean(), ys.mean()])
                types.append(c + 1)
    return np.array(points, dtype=np.float64).reshape(-1, 2), np.array(types, dtype=np.int64)


def pair_coordinates(set_a, set_b, radius):
    """HoVer-Net's pairing: the optimal assignment over the whole distance matrix, then pairs > radius dropped."""
    distance = cdist(set_a, set_b, metric="euclidean")
    rows, cols = linear_sum_assignment(distance)
    cost = distance[rows, cols]
    paired = np.stack([rows[cost <= radius], cols[cost <= radius]], axis=1)
    return paired, np.delete(np.arange(len(set_a)), paired[:, 0]), np.delete(np.arange(len(set_b)), paired[:, 1])


def type_stats(patches, radius=12):
    """HoVer-Net's numbers over [(true_points, true_types, pred_points, pred_types), ...], plus precision/recall.

    {"f1", "precision", "recall", "type_accuracy", "f1_per_type": {1..5: F1}}; a 0/0 is NaN.
    """
    paired_all, unpaired_true_all, unpaired_pred_all, true_types_all, pred_types_all = [], [], [], [], []
    true_offset = pred_offset = 0
    for true_points, true_types, pred_points, pred_types in patches:
        true_points = np.asarray(true_points, dtype=np.float32).reshape(-1, 2)
        pred_points = np.asarray(pred_points, dtype=np.float32).reshape(-1, 2)
        true_types = np.asarray(true_types, dtype=np.int32).reshape(-1)
        pred_types = np.asarray(pred_types, dtype=np.int32).reshape(-1)
        if len(true_points) == 0:
            true_points, true_types = np.array([[0, 0]]), np.array([0])
        if len(pred_points) == 0:
            pred_points, pred_types = np.array([[0, 0]]), np.array([0])
        paired, unpaired_true, unpaired_pred = pair_coordinates(true_points, pred_points, radius)
        paired_all.append(paired + [true_offset, pred_offset])
        unpaired_true_all.append(unpaired_true + true_offset)
        unpaired_pred_all.append(unpaired_pred + pred_offset)
        true_types_all.append(true_types)
        pred_types_all.append(pred_types)
        true_offset += len(true_types)
        pred_offset += len(pred_types)
    paired = np.concatenate(paired_all)
    true_types = np.concatenate(true_types_all)
    pred_types = np.concatenate(pred_types_all)
    paired_true, paired_pred = true_types[paired[:, 0]], pred_types[paired[:, 1]]
    unpaired_true = true_types[np.concatenate(unpaired_true_all)]
    unpaired_pred = pred_types[np.concatenate(unpaired_pred_all)]

    def ratio(a, b):
        return a / b if b else math.nan

    tp, fp, fn = len(paired_pred), len(unpaired_pred), len(unpaired_true)
    f1_per_type = {}
    for t in range(1, 6):
        chosen = (paired_true == t) | (paired_pred == t)
        pt, pp = paired_true[chosen], paired_pred[chosen]
        tp_t = int(((pt == t) & (pp == t)).sum())
        tn_t = int(((pt != t) & (pp != t)).sum())
        fp_t = int(((pt != t) & (pp == t)).sum())
        fn_t = int(((pt == t) & (pp != t)).sum())
        fp_d, fn_d = int((unpaired_pred == t).sum()), int((unpaired_true == t).sum())
        f1_per_type[t] = ratio(2 * (tp_t + tn_t), 2 * (tp_t + tn_t) + 2 * fp_t + 2 * fn_t + fp_d + fn_d)
    return {
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "type_accuracy": ratio(int((paired_true == paired_pred).sum()), len(paired_true)),
        "f1_per_type": f1_per_type,
        "counts": [tp, fp, fn, int((paired_true == paired_pred).sum())],  # TP, FP, FN, pairs of the same type
    }
