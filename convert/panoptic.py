"""Panoptic quality of nucleus maps: the pairing, and PQ, DQ and SQ as each reference computes them.

One patch is matched once (`match`): the nuclei of each class channel and of the binary map (a later
channel winning, as the builder's instance_mask), and every overlapping (true, predicted) pair with its
intersection and IoU, from histograms over the shared pixels (no mask per nucleus). A pair matches when its
IoU is strictly above 0.5, so matches are unique (Kirillov et al.; PanNuke-metrics `utils.py get_fast_pq`).

From that one matching, the per-patch state of three references (columns of floats; a value that a
reference leaves out is stored as 0 with a 0 in its `counted` column, so that every reduction is a sum):

- `pannuke`: PanNuke-metrics `run.py`: PQ, DQ, SQ per class channel and of the binary map, per patch;
  mPQ/bPQ (and mDQ/mSQ/bDQ/bSQ) are means over the patches of each tissue, then over the 19 tissues;
- `cellvit`: CellViT `inference_cellvit_experiment_pannuke.py calculate_step_metric` and its
  `run_patch_inference` aggregation: the same pairing, DQ with 1e-6 in its denominator, class maps
  taken from the merged map, plain means over images (no tissue step), binary Dice and Jaccard;
- `conic`: CoNIC `compute_stats.py` `multi_pq+` (TP, FP, FN and IoU sums of each class pooled over all
  patches) and `get_multi_r2` (R² of the per-class counts), for PanNuke's five classes.
Plain functions of numpy arrays.
"""

import math
from typing import NamedTuple

import numpy as np

import pannuke_imagemask as pim

from .numbers import distinct
from .numbers import ratio as _ratio

MATCH_IOU = 0.5  # a pair matches when its IoU is strictly above this: such pairs are unique
SQ_EPSILON = 1.0e-6  # the SQ denominator of every reference is TP + 1e-6: a perfect nucleus scores 0.999999
DQ_EPSILON = 1.0e-6  # CellViT's and CoNIC's DQ denominator adds it too (PanNuke's and HoVer-Net's do not)
DENSE_PAIRS = 1 << 22  # above this many (true, pred) id pairs, count overlaps sparsely instead of densely
CLASSES = pim.NUCLEUS_CLASSES
COUNT = len(CLASSES)


class Pairs(NamedTuple):
    """Every overlapping (true, predicted) pair of two numbered maps, sorted by (true, pred) number."""

    true: np.ndarray  # (P,) true nucleus numbers
    pred: np.ndarray  # (P,) predicted nucleus numbers
    inter: np.ndarray  # (P,) shared pixels
    iou: np.ndarray  # (P,) float64 IoU
    true_area: np.ndarray  # pixels of each true number 0..max (0 unused)
    pred_area: np.ndarray


class Side(NamedTuple):
    """One side's nuclei: every (channel, id) nucleus, and the binary map of the later channel winning."""

    position: np.ndarray  # flat positions pixel * COUNT + channel of each nucleus pixel of each channel
    number: np.ndarray  # its nucleus number 1..n, in (channel, id) order
    per_channel: np.ndarray  # nuclei per channel (covered ones included)
    pixel: np.ndarray  # the binary map: pixels that hold a nucleus...
    top: np.ndarray  # ...and the number of the nucleus of the last channel there


class Matching(NamedTuple):
    """One patch's truth and prediction matched: per channel, and on the binary map."""

    size: tuple  # (H, W)
    true: Side
    pred: Side
    channel_pairs: Pairs  # pairs within a channel (numbers are unique across channels)
    binary_pairs: Pairs  # pairs of the binary maps


def nuclei(channels, count=COUNT):
    """(positions, their numbers, nuclei per channel) of channels 0..count-1 of (H, W, C) ids, sparse.

    Each (channel, id) pair is one nucleus, numbered 1..n in (channel, id) order: the official script's
    order, and inside a channel the order of the old ids. A map without background is like any other.
    Positions are pixel * count + channel.
    """
    width = channels.shape[-1]
    nonzero = channels != 0  # every channel: a strided view of only the channels read is several times slower
    # PanNuke's channel 5 (background) is non-zero almost everywhere: its positions are not searched.
    nonzero[..., count:] = False
    found = np.flatnonzero(nonzero)
    values = channels.reshape(-1)[found]
    pixel, channel = np.divmod(found, width)
    position = pixel * count + channel if count < width else found
    span = int(values.max(initial=0)) + 1
    keys, inverse = distinct(channel * span + values)
    return position, inverse + 1, np.bincount(keys // span, minlength=count)


def on_top(position, number, count=COUNT):
    """Each pixel's nucleus of the last channel, as the binary map sees it: (pixels, their numbers)."""
    pixel = position // count
    last = np.ones(len(pixel), dtype=bool)  # positions run through a pixel's channels in order
    last[:-1] = pixel[1:] != pixel[:-1]
    return pixel[last], number[last]


def pair_overlaps(true_position, true_number, pred_position, pred_number, size):
    """The Pairs of two sparse numbered maps over `size` positions."""
    on_true = np.zeros(size, dtype=np.int32)  # numbers are far below 2**31; half the zeroing of int64
    on_true[true_position] = true_number
    true_shared = on_true[pred_position].astype(np.int64)
    shared = true_shared > 0
    true_shared, pred_shared = true_shared[shared], pred_number[shared]
    height, width = int(true_number.max(initial=0)) + 1, int(pred_number.max(initial=0)) + 1
    if height * width <= DENSE_PAIRS:
        joint = np.bincount(true_shared * width + pred_shared, minlength=height * width).reshape(height, width)
        true_index, pred_index = np.nonzero(joint)
        inter = joint[true_index, pred_index]
    else:  # thousands of nuclei on both sides (a noisy prediction): a dense table would take gigabytes
        keys, inter = np.unique(true_shared * width + pred_shared, return_counts=True)
        true_index, pred_index = keys // width, keys % width
    true_area = np.bincount(true_number, minlength=height)
    pred_area = np.bincount(pred_number, minlength=width)
    iou = inter / (true_area[true_index] + pred_area[pred_index] - inter)
    return Pairs(true_index, pred_index, inter, iou, true_area, pred_area)


def _side(channels, count):
    position, number, per_channel = nuclei(channels, count)
    return Side(position, number, per_channel, *on_top(position, number, count))


def match(true, pred, count=COUNT):
    """The Matching of one patch's (H, W, >=count) truth and prediction ids (non-negative integers)."""
    height, width = true.shape[:2]
    true_side, pred_side = _side(true, count), _side(pred, count)
    channel_pairs = pair_overlaps(
        true_side.position, true_side.number, pred_side.position, pred_side.number, height * width * count
    )
    binary_pairs = pair_overlaps(true_side.pixel, true_side.top, pred_side.pixel, pred_side.top, height * width)
    return Matching((height, width), true_side, pred_side, channel_pairs, binary_pairs)


def matched(pairs):
    """The pairs whose IoU is above MATCH_IOU: (true numbers, predicted numbers, IoUs)."""
    kept = pairs.iou > MATCH_IOU
    return pairs.true[kept], pairs.pred[kept], pairs.iou[kept]


def matched_pairs(true_map, pred_map):
    """(true ids, predicted ids, IoUs) of the matched nuclei of two (H, W) maps of non-negative integer ids."""
    true_map, pred_map = np.asarray(true_map), np.asarray(pred_map)
    match_ = match(true_map[..., None], pred_map[..., None], 1)
    true_number, pred_number, iou = matched(match_.binary_pairs)
    true_ids = _ids_of(true_map, match_.true, true_number)
    pred_ids = _ids_of(pred_map, match_.pred, pred_number)
    return true_ids, pred_ids, iou


def _ids_of(id_map, side, numbers):
    """The map's ids of the given nucleus numbers (one channel: numbers follow the ids' order)."""
    ids = np.zeros(int(side.top.max(initial=0)) + 1, dtype=np.int64)
    ids[side.top] = id_map.reshape(-1)[side.pixel]
    return ids[numbers]


# ---------------------------------------------------------------------------------------------
# Counts per patch: (n_true, n_pred, tp, IoU sum) of each class and of the binary map.
# ---------------------------------------------------------------------------------------------


def _segment_counts(pairs, true_count, pred_count, true_group, pred_group, groups):
    """(groups, 4) counts n_true, n_pred, tp, IoU sum, for nuclei grouped by true_group / pred_group (by number)."""
    true_number, pred_number, iou = matched(pairs)
    same = true_group[true_number] == pred_group[pred_number]  # a match across groups is no match there
    group = true_group[true_number[same]]
    tp = np.bincount(group, minlength=groups)
    iou_sum = np.bincount(group, weights=iou[same], minlength=groups)
    return np.stack([true_count, pred_count, tp, iou_sum], axis=1).astype(np.float64)


def _groups(per_channel):
    """The channel of each nucleus number 0..n (number 0 unused: channel 0)."""
    return np.concatenate([[0], np.repeat(np.arange(len(per_channel)), per_channel)])


def channel_counts(matching):
    """(5, 4) n_true, n_pred, TP, IoU sum of each class channel (covered nuclei counted, as run.py)."""
    true, pred = matching.true, matching.pred
    return _segment_counts(
        matching.channel_pairs,
        true.per_channel,
        pred.per_channel,
        _groups(true.per_channel),
        _groups(pred.per_channel),
        COUNT,
    )


def _visible(side):
    """(nuclei still seen on the binary map per channel, the channel of each number)."""
    group = _groups(side.per_channel)
    seen = np.zeros(len(group), dtype=bool)
    seen[side.top] = True
    seen[0] = False
    return np.bincount(group[seen], minlength=COUNT), group


def merged_counts(matching):
    """(5, 4) counts of each class on the merged maps (the later channel winning; CoNIC's and CellViT's classes).

    A nucleus is of its channel's class, so its class map keeps it whole: the class-c pairs are the
    binary pairs of two class-c nuclei.
    """
    true_count, true_group = _visible(matching.true)
    pred_count, pred_group = _visible(matching.pred)
    return _segment_counts(matching.binary_pairs, true_count, pred_count, true_group, pred_group, COUNT)


def binary_counts(matching):
    """(4,) n_true, n_pred, TP, IoU sum of the binary maps (covered nuclei gone: not seen, not counted)."""
    true_number, _, iou = matched(matching.binary_pairs)
    n_true = np.count_nonzero(np.bincount(matching.true.top)[1:])
    n_pred = np.count_nonzero(np.bincount(matching.pred.top)[1:])
    return np.array([n_true, n_pred, len(true_number), iou.sum()], dtype=np.float64)


def quality(counts, dq_epsilon=0.0):
    """(DQ, SQ, PQ) of counts (..., 4) n_true, n_pred, TP, IoU sum; NaN where there is no true nucleus.

    DQ = TP / (TP + FP/2 + FN/2 + dq_epsilon), SQ = IoU sum / (TP + 1e-6), PQ = DQ * SQ.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n_true, n_pred, tp, iou_sum = np.moveaxis(counts, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dq = tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_true - tp) + dq_epsilon)
        sq = iou_sum / (tp + SQ_EPSILON)
    missing = n_true == 0
    dq, sq = np.where(missing, np.nan, dq), np.where(missing, np.nan, sq)
    return dq, sq, dq * sq


def panoptic_quality(true, pred):
    """PQ of two (H, W) maps of non-negative integer ids (0 background, each other id a nucleus); NaN if true has none."""
    return float(quality(binary_counts(match(true[..., None], pred[..., None], 1)))[2])


def nanmean(values):
    """np.nanmean, as the official script averages (same rounding), but NaN without a warning when all are NaN."""
    values = np.asarray(values, dtype=np.float64)
    return math.nan if np.isnan(values).all() else float(np.nanmean(values))


# ---------------------------------------------------------------------------------------------
# Per-patch state and reductions of the three references built on this pairing.
# ---------------------------------------------------------------------------------------------


def _stored(values):
    """(values with NaN as 0, 1 where counted) side by side: the state of a mean that skips NaN."""
    values = np.asarray(values, dtype=np.float64)
    counted = ~np.isnan(values)
    return np.where(counted, values, 0.0), counted.astype(np.float64)


def _class_means(dq, sq, pq):
    """The patch's nanmean over classes of DQ, SQ and PQ (NaN where no class is counted)."""
    return [nanmean(values) for values in (dq, sq, pq)]


QUALITIES = ("DQ", "SQ", "PQ")


def _quality_columns(prefix):
    return [f"{prefix}{q}" for q in QUALITIES]


PANNUKE_COLUMNS = [
    *(f"{name}_{q}{suffix}" for name in CLASSES for q in QUALITIES for suffix in ("", "_counted")),
    *(f"m{q}{suffix}" for q in QUALITIES for suffix in ("", "_counted")),
    *(f"b{q}{suffix}" for q in QUALITIES for suffix in ("", "_counted")),
]


def _interleaved(qualities):
    """[q0, q0 counted, q1, q1 counted, ...] of a list of values."""
    out = []
    for value in qualities:
        out.extend(_stored(value))
    return out


def pannuke_state(matching, classified=True):
    """The pannuke state row: PQ, DQ, SQ of each class channel, their patch means, and of the binary map."""
    dq, sq, pq = quality(channel_counts(matching))
    if not classified:
        dq = sq = pq = np.full(COUNT, np.nan)
    per_class = np.stack([dq, sq, pq], axis=1)  # (5, 3)
    row = _interleaved(per_class.ravel())
    row += _interleaved(_class_means(dq, sq, pq))
    row += _interleaved(quality(binary_counts(matching)))
    return np.array(row, dtype=np.float64)


def column(sums, columns, name):
    return sums[..., columns.index(name)]


def mean_of(sums, columns, name):
    """Per replicate and tissue: the mean of a stored value over the counted patches (NaN where none)."""
    return _ratio(column(sums, columns, name), column(sums, columns, f"{name}_counted"))


def over_tissues(per_tissue):
    """(R,) mean over the tissues that have a value, of (R, T) per-tissue values: the official script's step."""
    have = ~np.isnan(per_tissue)
    return _ratio(np.where(have, per_tissue, 0).sum(axis=-1), have.sum(axis=-1))


def pooled_mean(sums, columns, name):
    """(R,) the mean of a stored value over every counted patch, tissues pooled."""
    return mean_of(sums.sum(axis=1), columns, name)


def pannuke_reduce(sums, columns=PANNUKE_COLUMNS):
    """PanNuke-metrics run.py: m/b PQ, DQ, SQ over the tissues' patch means; per class over all patches."""
    out = {}
    for q in QUALITIES:
        out[f"m{q}"] = over_tissues(mean_of(sums, columns, f"m{q}"))
        out[f"b{q}"] = over_tissues(mean_of(sums, columns, f"b{q}"))
    out["per_class"] = {name: {q: pooled_mean(sums, columns, f"{name}_{q}") for q in QUALITIES} for name in CLASSES}
    out["per_tissue"] = {
        tissue: {key: mean_of(sums[:, t], columns, key) for key in ("mPQ", "bPQ", "mDQ", "mSQ", "bDQ", "bSQ")}
        for t, tissue in enumerate(pim.TISSUES)
    }
    return out


def binary_pixels(matching):
    """(true, predicted, shared) nucleus pixels of the binary maps."""
    shared = int(matching.binary_pairs.inter.sum())
    return len(matching.true.pixel), len(matching.pred.pixel), shared


CELLVIT_COLUMNS = [
    *(f"{name}_{q}{suffix}" for name in CLASSES for q in QUALITIES for suffix in ("", "_counted")),
    *(f"m{q}{suffix}" for q in QUALITIES for suffix in ("", "_counted")),
    *(f"b{q}{suffix}" for q in QUALITIES for suffix in ("", "_counted")),
    "dice",
    "dice_counted",
    "jaccard",
    "jaccard_counted",
]


def cellvit_state(matching, classified=True):
    """CellViT's per-image values: class maps from the merged map, DQ with its 1e-6, binary Dice and Jaccard.

    Dice is torchmetrics 0.11.4 `dice(ignore_index=0)` of the binary maps: 2TP / (2TP + FP + FN), 0 when both
    are empty (and counted); Jaccard `binary_jaccard_index`: TP / (TP + FP + FN), NaN when both are empty.
    """
    dq, sq, pq = quality(merged_counts(matching), DQ_EPSILON)
    if not classified:
        dq = sq = pq = np.full(COUNT, np.nan)
    row = _interleaved(np.stack([dq, sq, pq], axis=1).ravel())
    row += _interleaved(_class_means(dq, sq, pq))
    row += _interleaved(quality(binary_counts(matching), DQ_EPSILON))
    true, pred, shared = binary_pixels(matching)
    union = true + pred - shared
    dice = 2 * shared / (true + pred) if true + pred else 0.0
    jaccard = shared / union if union else math.nan
    row += _interleaved([dice, jaccard])
    return np.array(row, dtype=np.float64)


def cellvit_reduce(sums, columns=CELLVIT_COLUMNS):
    """CellViT's inference_results.json: plain means over images (no tissue step), per tissue over its images."""
    out = {}
    for q in QUALITIES:
        out[f"b{q}"] = pooled_mean(sums, columns, f"b{q}")
    for q in QUALITIES:
        out[f"m{q}"] = pooled_mean(sums, columns, f"m{q}")
    out["binary_dice"] = pooled_mean(sums, columns, "dice")
    out["binary_jaccard"] = pooled_mean(sums, columns, "jaccard")
    out["per_class"] = {name: {q: pooled_mean(sums, columns, f"{name}_{q}") for q in QUALITIES} for name in CLASSES}
    out["per_tissue"] = {
        tissue: {
            "dice": mean_of(sums[:, t], columns, "dice"),
            "jaccard": mean_of(sums[:, t], columns, "jaccard"),
            "mPQ": mean_of(sums[:, t], columns, "mPQ"),
            "bPQ": mean_of(sums[:, t], columns, "bPQ"),
        }
        for t, tissue in enumerate(pim.TISSUES)
    }
    return out


CONIC_PARTS = ("true", "pred", "tp", "iou")
CONIC_COLUMNS = [
    *(f"{name}_{part}" for name in CLASSES for part in CONIC_PARTS),
    *(f"{name}_{part}" for name in CLASSES for part in ("count_sq", "residual_sq")),
    "PQ",
]


def conic_state(matching, classified=True):
    """CoNIC's per-image counts: per class nuclei, TP and IoU sum (merged maps), counts for R², binary PQ.

    CoNIC's `get_pq` scores an image without true nuclei 0 (its 1e-6 denominators), and counts it.
    """
    counts = merged_counts(matching)  # (5, 4) n_true, n_pred, tp, iou
    if not classified:
        counts = np.full_like(counts, np.nan)
    true, pred = counts[:, 0], counts[:, 1]
    dq, sq, _ = quality(binary_counts(matching), DQ_EPSILON)
    binary = 0.0 if np.isnan(dq) else float(dq * sq)
    return np.concatenate([counts.ravel(), np.stack([true**2, (true - pred) ** 2], axis=1).ravel(), [binary]])


def conic_reduce(sums, columns=CONIC_COLUMNS, patches=None):
    """CoNIC: mPQ+ from per-class sums over all images, R² of per-class counts (sklearn r2_score), mean binary PQ.

    patches: (R,) patches per replicate (R² needs n); sums are (R, T, K).
    """
    total = sums.sum(axis=1)
    get = lambda name: total[:, columns.index(name)]
    per_class = {}
    for name in CLASSES:
        n_true, n_pred, tp, iou = (get(f"{name}_{part}") for part in CONIC_PARTS)
        fp, fn = n_pred - tp, n_true - tp
        dq = tp / (tp + 0.5 * fp + 0.5 * fn + DQ_EPSILON)
        sq = iou / (tp + SQ_EPSILON)
        # R² = 1 - n Σ(y - ŷ)² / (n Σy² - (Σy)²): integers in float64, exact, so a constant truth is exactly 0.
        spread = patches * get(f"{name}_count_sq") - n_true**2
        residual = patches * get(f"{name}_residual_sq")
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = np.where(spread > 0, 1 - residual / np.where(spread > 0, spread, 1), np.where(residual == 0, 1.0, 0.0))
        per_class[name] = {"PQ+": dq * sq, "DQ+": dq, "SQ+": sq, "R2": r2}
    return {
        "mPQ+": np.mean([per_class[n]["PQ+"] for n in CLASSES], axis=0),
        "R2": np.mean([per_class[n]["R2"] for n in CLASSES], axis=0),
        "PQ": _ratio(get("PQ"), patches),
        "per_class": per_class,
    }
