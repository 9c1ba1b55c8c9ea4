"""Detection and classification F1 of nucleus centroids, as HoVer-Net's compute_stats.py run_nuclei_type_stat.

Per patch, true and predicted nuclei are points (x, y) with a type (1..5, 0 for none). They are paired
by an optimal assignment on Euclidean distance over all of them, and pairs farther apart than the
radius are dropped after it; the counts of every patch are summed, and the scores come from the sums.
Plain functions of numpy arrays.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

import pannuke_imagemask as pim

from .numbers import ratio as _ratio

RADIUS = 12.0  # pixels: HoVer-Net's for PanNuke's 40x patches (CellViT uses 6 at 20x)
CLASS_TYPES = range(1, pim.NUM_CLASS_CHANNELS + 1)  # HoVer-Net type ids of the classes: channel + 1
# Per class type t: pairs of true and predicted type t, pairs predicted t of another true type, pairs
# true t predicted another type, unpaired predictions of type t, unpaired true nuclei of type t.
CLASS_COUNTS = ("tp", "fp", "fn", "fp_d", "fn_d")
COUNT_COLUMNS = ["pairs", "unpaired_pred", "unpaired_true", "same_type"] + [
    f"{name}_{count}" for name in pim.NUCLEUS_CLASSES for count in CLASS_COUNTS
]
DUMMY_POINT = np.zeros((1, 2))  # HoVer-Net's stand-in for a side without nuclei: (0, 0) of type 0
DUMMY_TYPE = np.zeros(1, dtype=np.int64)


def _type_counts(types):
    """How many of the types are 1, 2, ..., 5 (other values are counted nowhere)."""
    return np.bincount(types[(types >= 1) & (types <= len(CLASS_TYPES))], minlength=len(CLASS_TYPES) + 1)[1:]


def pairing(true_xy, true_types, pred_xy, pred_types, radius=RADIUS):
    """(true types of the pairs, their predicted types, unpaired true types, unpaired predicted types), as
    HoVer-Net's run_nuclei_type_stat pairs one patch's nuclei.

    true_xy / pred_xy are (N, 2) points (x, y), the types (N,) integers (1..5 the classes, 0 none). A
    side without nuclei gets one point (0, 0) of type 0, which pairs and counts like any other: two
    empty sides make one pair. Coordinates are rounded to float32 first, as HoVer-Net reads them.
    """
    true_xy, true_types = _side(true_xy, true_types)
    pred_xy, pred_types = _side(pred_xy, pred_types)
    distance = cdist(true_xy, pred_xy)  # float64 distances of the float32 points, as HoVer-Net's cdist
    true_index, pred_index = linear_sum_assignment(distance)
    kept = distance[true_index, pred_index] <= radius  # the radius filters the optimal pairs afterwards
    paired_true, paired_pred = true_index[kept], pred_index[kept]
    return (
        true_types[paired_true],
        pred_types[paired_pred],
        np.delete(true_types, paired_true),
        np.delete(pred_types, paired_pred),
    )


def pair_counts(true_xy, true_types, pred_xy, pred_types, radius=RADIUS):
    """One patch's counts, in COUNT_COLUMNS order, as HoVer-Net's run_nuclei_type_stat counts them."""
    return counts_of(pairing(true_xy, true_types, pred_xy, pred_types, radius))


def counts_of(paired):
    """The COUNT_COLUMNS counts of a pairing."""
    true_paired, pred_paired, unpaired_true, unpaired_pred = paired
    same = true_paired == pred_paired
    per_class = np.stack(
        [
            _type_counts(true_paired[same]),  # true t, predicted t
            _type_counts(pred_paired[~same]),  # predicted t, true another type
            _type_counts(true_paired[~same]),  # true t, predicted another type
            _type_counts(unpaired_pred),
            _type_counts(unpaired_true),
        ],
        axis=1,
    )
    detection = [len(true_paired), len(unpaired_pred), len(unpaired_true), int(same.sum())]
    return np.concatenate([detection, per_class.ravel()]).astype(np.int64)


def confusion_of(paired):
    """(6, 6) counts of the pairs by (true type, predicted type), 0 = no type (HoVer-Net's dummy point too)."""
    true_paired, pred_paired, _, _ = paired
    size = len(CLASS_TYPES) + 1
    valid = (true_paired >= 0) & (true_paired < size) & (pred_paired >= 0) & (pred_paired < size)
    keys = true_paired[valid].astype(np.int64) * size + pred_paired[valid]
    return np.bincount(keys, minlength=size * size).reshape(size, size)


def _side(xy, types):
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return DUMMY_POINT, DUMMY_TYPE
    return xy.astype(np.float32), np.asarray(types).astype(np.int32).ravel()


def scores(total, classified=True):
    """The F1 scores of summed counts (R, len(COUNT_COLUMNS)): {"detection": {...}, "f1_per_class": {...}}, (R,) each.

    F_d = 2 TP / (2 TP + FP + FN); type accuracy = pairs of equal type / pairs; per class t,
    F_t = 2 TP_t / (2 TP_t + 2 FP_t + 2 FN_t + FP_d,t + FN_d,t) (HoVer-Net's weights 2, 2, 1, 1; its
    TN_t is always 0). Without classes (classified False) type accuracy and F_t are NaN: not available.
    """
    total = np.asarray(total, dtype=np.float64).reshape(-1, len(COUNT_COLUMNS))
    pairs, fp, fn, same = (total[:, k] for k in range(4))
    nan = np.full(len(total), np.nan)
    detection = {
        "f1": _ratio(2 * pairs, 2 * pairs + fp + fn),
        "precision": _ratio(pairs, pairs + fp),
        "recall": _ratio(pairs, pairs + fn),
        "type_accuracy": _ratio(same, pairs) if classified else nan,
    }
    per_class = total[:, 4:].reshape(len(total), len(CLASS_TYPES), len(CLASS_COUNTS))
    f1_per_class = {}
    for k, name in enumerate(pim.NUCLEUS_CLASSES):
        tp_t, fp_t, fn_t, fp_d, fn_d = (per_class[:, k, j] for j in range(len(CLASS_COUNTS)))
        f1 = _ratio(2 * tp_t, 2 * tp_t + 2 * fp_t + 2 * fn_t + fp_d + fn_d)
        f1_per_class[name] = f1 if classified else nan
    return {"detection": detection, "f1_per_class": f1_per_class}


def summarize(counts, classified=True, radius=RADIUS):
    """The scores from the counts of every patch summed, as floats, with the radius: see scores()."""
    total = np.asarray(counts, dtype=np.int64).reshape(-1, len(COUNT_COLUMNS)).sum(axis=0)
    result = scores(total[None], classified)
    detection = {key: float(value[0]) for key, value in result["detection"].items()}
    detection["radius"] = float(radius)
    return {"detection": detection, "f1_per_class": {k: float(v[0]) for k, v in result["f1_per_class"].items()}}
