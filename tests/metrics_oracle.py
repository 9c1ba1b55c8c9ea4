"""Slow, straightforward oracles of the other references' numbers, written from their definitions
(../shared/docs/metrics.md and the references' code as read), not from convert's modules.

One boolean mask per nucleus and Python loops, as HoVer-Net's stats_utils.py, CellViT's metrics and CoNIC's
compute_stats.py do it. Inputs are plain label maps: the truth's instance and class maps (the builder's,
from tests/reference.py) and the prediction's binary map with the class of each pixel.
"""

import math

import numpy as np
from scipy.optimize import linear_sum_assignment


def remap(instance):
    """Ids renumbered 1..n in increasing order of the old id (remap_label, by_size=False)."""
    out = np.zeros(instance.shape, dtype=np.int64)
    for new, old in enumerate(sorted(set(instance.ravel().tolist()) - {0}), start=1):
        out[instance == old] = new
    return out


def _masks(instance):
    return [instance == k for k in range(1, int(instance.max(initial=0)) + 1)]


def _pairwise(true, pred):
    """(intersections, unions) (n_true, n_pred) of remapped maps."""
    tm, pm = _masks(true), _masks(pred)
    inter = np.zeros((len(tm), len(pm)))
    union = np.zeros((len(tm), len(pm)))
    for i, t in enumerate(tm):
        for j, p in enumerate(pm):
            shared = int((t & p).sum())
            if shared:
                inter[i, j] = shared
                union[i, j] = int((t | p).sum())
    return inter, union, [int(m.sum()) for m in tm], [int(m.sum()) for m in pm]


def fast_pq(true, pred, dq_epsilon=0.0):
    """[DQ, SQ, PQ] of remapped maps: pairs with IoU > 0.5; DQ = TP / (TP + FP/2 + FN/2 + eps), SQ = ΣIoU / (TP + 1e-6)."""
    inter, union, true_area, pred_area = _pairwise(true, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    paired = iou > 0.5
    tp = int(paired.sum())
    fp, fn = len(pred_area) - tp, len(true_area) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn + dq_epsilon)
    sq = iou[paired].sum() / (tp + 1.0e-6)
    return [dq, sq, dq * sq]


def aji(true, pred, plus=False):
    """AJI (each true nucleus with the prediction of highest IoU) or AJI+ (Hungarian, one-to-one)."""
    inter, union, true_area, pred_area = _pairwise(true, pred)
    iou = inter / (union + 1.0e-6)
    if plus:
        rows, cols = linear_sum_assignment(-iou)
    else:
        rows = np.arange(len(true_area))
        cols = np.array([int(np.argmax(iou[r])) for r in rows], dtype=np.int64) if len(pred_area) else rows[:0]
        rows = rows[: len(cols)]
    keep = [k for k in range(len(rows)) if iou[rows[k], cols[k]] > 0]
    rows, cols = rows[keep], cols[keep]
    c = sum(inter[r, q] for r, q in zip(rows, cols))
    u = sum(union[r, q] for r, q in zip(rows, cols))
    u += sum(a for k, a in enumerate(true_area) if k not in set(rows.tolist()))
    u += sum(a for k, a in enumerate(pred_area) if k not in set(cols.tolist()))
    return c / u


def dice1(true, pred):
    t, p = (true > 0).astype(np.int64), (pred > 0).astype(np.int64)
    return 2.0 * (t * p).sum() / (t + p).sum()


def hovernet_inst(true, pred):
    """[Dice, AJI, AJI+, DQ, SQ, PQ] of one patch, with the policy where HoVer-Net's code stops: None when both
    are empty (left out), zeros when the prediction is empty."""
    true, pred = remap(true), remap(pred)
    if true.max() == 0 and pred.max() == 0:
        return None
    if pred.max() == 0:
        return [0.0] * 6
    return [dice1(true, pred), aji(true, pred), aji(true, pred, plus=True), *fast_pq(true, pred)]


def class_map(instance, classes, c):
    """The instance map masked by its class map == c (CoNIC's and CellViT's per-class maps)."""
    return np.where(classes == c, instance, 0)


def nanmean(values):
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def cellvit_image(true_inst, true_cls, pred_inst, pred_cls):
    """CellViT's per-image values: bPQ/bDQ/bSQ, per class [DQ, SQ, PQ] (NaN where the class is absent from the
    truth), binary Dice (0 when both empty) and Jaccard (NaN when both empty)."""
    out = {}
    if true_inst.max() == 0:
        out["b"] = [math.nan] * 3
    else:
        out["b"] = fast_pq(remap(true_inst), remap(pred_inst), 1e-6)
    out["classes"] = []
    for c in range(1, 6):
        t = remap(class_map(true_inst, true_cls, c))
        out["classes"].append(
            [math.nan] * 3 if t.max() == 0 else fast_pq(t, remap(class_map(pred_inst, pred_cls, c)), 1e-6)
        )
    t, p = true_inst > 0, pred_inst > 0
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    out["dice"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    out["jaccard"] = tp / (tp + fp + fn) if tp + fp + fn else math.nan
    return out


def conic(trues, preds):
    """CoNIC's mPQ+ (5 classes), per-class PQ+, R² (sklearn r2_score of per-image counts), binary PQ (image mean)
    of lists of (instance, class) pairs."""
    from sklearn.metrics import r2_score

    sums = np.zeros((5, 4))  # tp, fp, fn, iou
    true_counts, pred_counts, binary = [], [], []
    for (ti, tc), (pi, pc) in zip(trues, preds):
        tcount, pcount = [], []
        for c in range(1, 6):
            t, p = remap(class_map(ti, tc, c)), remap(class_map(pi, pc, c))
            inter, union, true_area, pred_area = _pairwise(t, p)
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            paired = iou > 0.5
            tp = int(paired.sum())
            sums[c - 1] += [tp, len(pred_area) - tp, len(true_area) - tp, iou[paired].sum()]
            tcount.append(len(true_area))
            pcount.append(len(pred_area))
        true_counts.append(tcount)
        pred_counts.append(pcount)
        binary.append(fast_pq(remap(ti), remap(pi), 1e-6)[2])
    per_class = []
    for tp, fp, fn, iou in sums:
        per_class.append(tp / (tp + fp / 2 + fn / 2 + 1e-6) * (iou / (tp + 1e-6)))
    true_counts, pred_counts = np.array(true_counts), np.array(pred_counts)
    r2 = [r2_score(true_counts[:, k], pred_counts[:, k]) for k in range(5)]
    return {
        "mPQ+": float(np.mean(per_class)),
        "per_class": per_class,
        "R2": float(np.mean(r2)),
        "per_class_r2": r2,
        "PQ": float(np.mean(binary)),
    }
