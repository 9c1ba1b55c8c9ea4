"""HoVer-Net's instance statistics, as compute_stats.py run_nuclei_inst_stat computes and averages them.

Per patch, on the binary maps (the builder's instance_mask against the prediction's binary map, each
renumbered 1..n in the order of its nuclei, as remap_label does): Dice (DICE1, get_dice_1), AJI
(get_fast_aji), AJI+ (get_fast_aji_plus) and DQ, SQ, PQ (get_fast_pq, DQ without epsilon); the result is
the plain mean of each over the patches (np.mean). Plain functions of numpy arrays.

Where HoVer-Net's code stops (a patch where both maps are empty: get_fast_pq divides by zero; a patch with
true nuclei and no prediction: get_fast_aji takes an argmax of nothing), the policy is:
- both empty: the patch is left out of all six means (no number exists), and counted in `skipped_empty`;
- no prediction: every statistic is 0 (the value AJI+ and PQ give there, and AJI's limit), counted in
  `empty_prediction`.
A patch without true nuclei but with predicted ones scores 0 everywhere, as HoVer-Net's code gives.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment

from .numbers import ratio
from .panoptic import binary_counts, binary_pixels, quality

AJI_EPSILON = 1.0e-6  # get_fast_aji's IoU is inter / (union + 1e-6): it picks and pairs by that
STATS = ("dice1", "aji", "aji_plus", "DQ", "SQ", "PQ")  # run_nuclei_inst_stat's order is Dice, AJI, DQ, SQ, PQ, AJI+
COLUMNS = [*STATS, "counted", "skipped_empty", "empty_prediction"]
REFERENCE = "hover_net compute_stats.py run_nuclei_inst_stat (metrics/stats_utils.py)"


def _dense(matching):
    """(inter, union) (n_true, n_pred) of the seen nuclei of the binary maps, rows and columns in number order,
    and the areas of the seen true and predicted nuclei."""
    pairs = matching.binary_pairs
    true_seen = np.flatnonzero(pairs.true_area)
    pred_seen = np.flatnonzero(pairs.pred_area)
    true_row = np.zeros(len(pairs.true_area), dtype=np.int64)
    true_row[true_seen] = np.arange(len(true_seen))
    pred_col = np.zeros(len(pairs.pred_area), dtype=np.int64)
    pred_col[pred_seen] = np.arange(len(pred_seen))
    inter = np.zeros((len(true_seen), len(pred_seen)))
    union = np.zeros((len(true_seen), len(pred_seen)))
    rows, cols = true_row[pairs.true], pred_col[pairs.pred]
    inter[rows, cols] = pairs.inter
    union[rows, cols] = pairs.true_area[pairs.true] + pairs.pred_area[pairs.pred] - pairs.inter
    return inter, union, pairs.true_area[true_seen], pairs.pred_area[pred_seen]


def _aji(inter, union, true_area, pred_area, one_to_one):
    """AJI (each true nucleus with its best prediction, shared) or AJI+ (one-to-one, Hungarian on IoU)."""
    iou = inter / (union + AJI_EPSILON)
    if one_to_one:
        true_index, pred_index = linear_sum_assignment(-iou)
    else:
        true_index, pred_index = np.arange(len(iou)), np.argmax(iou, axis=1)
    kept = iou[true_index, pred_index] > 0.0
    true_index, pred_index = true_index[kept], pred_index[kept]
    shared = inter[true_index, pred_index].sum()
    joined = union[true_index, pred_index].sum()
    unpaired_true = np.ones(len(true_area), dtype=bool)
    unpaired_true[true_index] = False
    unpaired_pred = np.ones(len(pred_area), dtype=bool)
    unpaired_pred[pred_index] = (
        False  # a prediction chosen by several true nuclei is paired (its union counts each time)
    )
    joined += true_area[unpaired_true].sum() + pred_area[unpaired_pred].sum()
    return shared / joined


def patch_state(matching):
    """The row of COLUMNS of one patch."""
    n_true, n_pred, _, _ = binary_counts(matching)
    if n_true == 0 and n_pred == 0:
        return np.array([0.0] * len(STATS) + [0.0, 1.0, 0.0])
    if n_pred == 0:
        return np.array([0.0] * len(STATS) + [1.0, 0.0, 1.0])
    true, pred, shared = binary_pixels(matching)
    dice = 2.0 * shared / (true + pred)
    inter, union, true_area, pred_area = _dense(matching)
    aji = _aji(inter, union, true_area, pred_area, one_to_one=False)
    aji_plus = _aji(inter, union, true_area, pred_area, one_to_one=True)
    if n_true == 0:  # get_fast_pq gives [0, 0, 0] there; quality() says NaN, as PanNuke's script
        dq = sq = pq = 0.0
    else:
        dq, sq, pq = (float(v) for v in quality(binary_counts(matching)))
    return np.array([dice, aji, aji_plus, dq, sq, pq, 1.0, 0.0, 0.0])


def reduce(sums):
    """Plain means over the counted patches, and how many patches the policy touched."""
    total = sums.sum(axis=1)
    counted = total[:, COLUMNS.index("counted")]
    out = {name: ratio(total[:, k], counted) for k, name in enumerate(STATS)}
    out["skipped_empty"] = total[:, COLUMNS.index("skipped_empty")]
    out["empty_prediction"] = total[:, COLUMNS.index("empty_prediction")]
    return out
