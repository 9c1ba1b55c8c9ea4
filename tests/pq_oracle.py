"""A slow, straightforward PanNuke mPQ and bPQ, written from the issue's definition, not from convert.evaluate.

Python loops and one boolean mask per nucleus, as the official script does it; the test oracle for the
fast implementation.
"""

import math

import numpy as np

from pannuke_imagemask import NUCLEUS_CLASSES, TISSUES


def nan_mean(values):
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def renumber(channel):
    """Truncate to int32, then number the ids 1..n in increasing order of the old id."""
    values = np.asarray(channel).astype(np.int32)
    out = np.zeros(values.shape, dtype=np.int64)
    for new, old in enumerate(sorted(set(values.ravel().tolist()) - {0}), start=1):
        out[values == old] = new
    return out


def binarize(channels):
    """Channels 0..4 painted in order, each (channel, value) pair the next number."""
    out = np.zeros(channels.shape[:2], dtype=np.int64)
    count = 1
    for c in range(5):
        values = np.asarray(channels[..., c]).astype(np.int32)
        for value in sorted(set(values.ravel().tolist()) - {0}):
            out[values == value] = count
            count += 1
    return out


def pq(true, pred):
    """PQ with IoU > 0.5 pairing, one mask per nucleus; NaN when true has no nucleus."""
    true_ids = sorted(set(true.ravel().tolist()) - {0})
    pred_ids = sorted(set(pred.ravel().tolist()) - {0})
    if not true_ids:
        return math.nan
    pred_masks = {p: pred == p for p in pred_ids}
    paired_ious = []
    paired_pred = set()
    for t in true_ids:
        true_mask = true == t
        for p in sorted(set(pred[true_mask].tolist()) - {0}):
            inter = int(np.logical_and(true_mask, pred_masks[p]).sum())
            union = int(np.logical_or(true_mask, pred_masks[p]).sum())
            iou = inter / union
            if iou > 0.5:
                assert p not in paired_pred, "IoU > 0.5 pairs are unique"
                paired_pred.add(p)
                paired_ious.append(iou)
    tp = len(paired_ious)
    fp = len(pred_ids) - tp
    fn = len(true_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(paired_ious) / (tp + 1.0e-6)
    return dq * sq


def patch_scores(true, pred):
    """[PQ of classes 0..4, patch mPQ, patch bPQ] of (H, W, >=5) truth and prediction channels."""
    class_pq = [pq(renumber(true[..., j]), renumber(pred[..., j])) for j in range(5)]
    return [*class_pq, nan_mean(class_pq), pq(binarize(true), binarize(pred))]


def summarize(scores, tissues):
    """Final mPQ, bPQ, per-class PQ and per-tissue results from per-patch scores, as the issue defines them."""
    per_tissue = {}
    for tissue in TISSUES:
        rows = [s for s, t in zip(scores, tissues) if t == tissue]
        per_tissue[tissue] = {
            "patches": len(rows),
            "mPQ": nan_mean([r[5] for r in rows]),
            "bPQ": nan_mean([r[6] for r in rows]),
        }
    return {
        "mPQ": nan_mean([t["mPQ"] for t in per_tissue.values()]),
        "bPQ": nan_mean([t["bPQ"] for t in per_tissue.values()]),
        "per_class": {name: nan_mean([s[j] for s in scores]) for j, name in enumerate(NUCLEUS_CLASSES)},
        "per_tissue": per_tissue,
    }
