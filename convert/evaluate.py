"""Score nucleus predictions on a split with PanNuke's mPQ and bPQ, the numbers every PanNuke paper reports.

The metric is the official evaluation script's, computed one patch at a time from the raw folds, with
pairwise IoU from one joint histogram per map, and defined where the official script crashes (a nucleus
wholly covered by a later channel, a map without background).
"""

import csv
import json
import logging
import math
import os
import sys

import numpy as np

import pannuke_imagemask as pim

from . import __version__
from .common import add_source_arguments, command_parser, config_named, progress_bar, resolve_source, run_cli
from .pool import WORKER, opened, run_tasks

logger = logging.getLogger(__name__)

MATCH_IOU = 0.5  # a pair matches when its IoU is strictly above this: such pairs are unique
SQ_EPSILON = 1.0e-6  # the official script's SQ denominator is TP + 1e-6, so a perfect score is 0.999999...
NUM_TYPES = pim.NUM_CLASS_CHANNELS + 1  # HoVer-Net type values: 0 background, 1..5 the nucleus classes
MAX_PRED_ID = np.iinfo(np.int32).max  # the official script truncates to int32
KEY_SPAN = MAX_PRED_ID + 1  # (channel, id) keys: channel * KEY_SPAN + id
DENSE_PAIRS = 1 << 22  # above this many (true, pred) id pairs, count overlaps sparsely instead of densely
TASK_PATCHES = 32  # patches per task handed to a worker
SPLIT_ALIASES = {"valid": "validation"}  # the exported folder's name for it

SCORE_COLUMNS = [f"pq_{name}" for name in pim.NUCLEUS_CLASSES] + ["mPQ", "bPQ"]
PER_PATCH_COLUMNS = ["id", "fold", "index", "tissue", *SCORE_COLUMNS]


# ---------------------------------------------------------------------------------------------
# The metric: plain functions of numpy arrays.
# ---------------------------------------------------------------------------------------------


def _nuclei(channels, count):
    """The nuclei of channels 0..count-1 of (H, W, C), sparse: (positions, their numbers, nuclei per channel).

    Each (channel, id) pair is one nucleus, numbered 1..n in (channel, id) order: the official script's
    order, and inside a channel the order of the old ids. A map without background is like any other.
    Positions are pixel * count + channel.
    """
    flat = channels.reshape(-1)  # whole contiguous patches: strided channel views are ten times slower
    position = np.flatnonzero(flat != 0)
    pixel, channel = np.divmod(position, channels.shape[-1])
    if count < channels.shape[-1]:
        used = channel < count
        position, pixel, channel = position[used], pixel[used], channel[used]
    keys, number = np.unique(channel * KEY_SPAN + flat[position], return_inverse=True)
    per_channel = np.bincount(keys // KEY_SPAN, minlength=count)
    return pixel * count + channel, number.ravel() + 1, per_channel


def _on_top(position, number, channels):
    """Each pixel's nucleus of the last channel, as the binary map sees it: (pixels, their numbers)."""
    pixel = position // channels
    last = np.ones(len(pixel), dtype=bool)  # positions run through a pixel's channels in order
    last[:-1] = pixel[1:] != pixel[:-1]
    return pixel[last], number[last]


def _pair_ious(true_position, true_number, pred_position, pred_number, size):
    """(true number, IoU) of every overlapping pair of nuclei, sorted by (true, pred) number.

    Intersections and areas all come from histograms over the shared positions: no mask per nucleus.
    """
    on_true = np.zeros(size, dtype=np.int64)
    on_true[true_position] = true_number
    true_shared = on_true[pred_position]
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
    return true_index, inter / (true_area[true_index] + pred_area[pred_index] - inter)


def _quality(n_true, n_pred, iou):
    """PQ from the nucleus counts and the IoUs of the overlapping pairs, in (true, pred) order."""
    if n_true == 0:
        return math.nan
    paired = iou > MATCH_IOU
    tp = int(paired.sum())
    fp, fn = n_pred - tp, n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou[paired].sum() / (tp + SQ_EPSILON)
    return float(dq * sq)


def _qualities(true, pred, count):
    """([PQ of each class channel 0..count-1], binary PQ) of (H, W, >=count) truth and prediction channels."""
    size = true.shape[0] * true.shape[1] * count
    true_position, true_number, true_count = _nuclei(true, count)
    pred_position, pred_number, pred_count = _nuclei(pred, count)
    pair_true, iou = _pair_ious(true_position, true_number, pred_position, pred_number, size)
    # The pairs come sorted by true number, and the numbers run through the channels in order.
    ends = np.searchsorted(pair_true, np.cumsum(true_count), side="right")
    starts = np.concatenate([[0], ends[:-1]])
    class_pq = [_quality(int(true_count[j]), int(pred_count[j]), iou[starts[j] : ends[j]]) for j in range(count)]
    true_pixel, true_top = _on_top(true_position, true_number, count)
    pred_pixel, pred_top = _on_top(pred_position, pred_number, count)
    _, binary_iou = _pair_ious(true_pixel, true_top, pred_pixel, pred_top, size // count)
    # Covered nuclei leave gaps in the numbers (the official script's IndexError): count those still seen.
    seen_true = np.count_nonzero(np.bincount(true_top)[1:])
    seen_pred = np.count_nonzero(np.bincount(pred_top)[1:])
    return class_pq, _quality(seen_true, seen_pred, binary_iou)


def panoptic_quality(true, pred):
    """PQ of two (H, W) maps of non-negative integer ids (0 background, each other id a nucleus); NaN if true has none."""
    return _qualities(true[..., None], pred[..., None], 1)[0][0]


def patch_scores(true, pred):
    """[PQ of each class 0..4, patch mPQ, patch bPQ] of one patch's (H, W, >=5) truth and prediction ids.

    Ids are non-negative integers (check_ids); channels after 0..4 are not read.
    """
    class_pq, binary_pq = _qualities(true, pred, pim.NUM_CLASS_CHANNELS)
    return np.array([*class_pq, nanmean(class_pq), binary_pq])


def _renumber(ids):
    """Flattened ids as 0 (background) and 1..n in increasing order of the old id; returns (ids, n)."""
    values, inverse = np.unique(ids.ravel(), return_inverse=True)
    if values[0] != 0:  # no background pixel: every value is a nucleus
        return inverse.ravel() + 1, len(values)
    return inverse.ravel(), len(values) - 1


def nanmean(values):
    """np.nanmean, as the official script averages (same rounding), but NaN without a warning when all are NaN."""
    values = np.asarray(values, dtype=np.float64)
    return math.nan if np.isnan(values).all() else float(np.nanmean(values))


def summarize(scores, tissues):
    """Final mPQ, bPQ (means over the 19 tissues), per-class PQ (over patches) and per-tissue results.

    scores is (N, 7) as from patch_scores, tissues the N tissue names.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(SCORE_COLUMNS))
    tissues = np.asarray(tissues)
    per_tissue = {}
    for tissue in pim.TISSUES:
        rows = scores[tissues == tissue]
        per_tissue[tissue] = {"patches": len(rows), "mPQ": nanmean(rows[:, -2]), "bPQ": nanmean(rows[:, -1])}
    return {
        "mPQ": nanmean([t["mPQ"] for t in per_tissue.values()]),
        "bPQ": nanmean([t["bPQ"] for t in per_tissue.values()]),
        "per_class": {name: nanmean(scores[:, j]) for j, name in enumerate(pim.NUCLEUS_CLASSES)},
        "per_tissue": per_tissue,
    }


# ---------------------------------------------------------------------------------------------
# Predictions: checks and the HoVer-Net layout.
# ---------------------------------------------------------------------------------------------


def check_ids(values, where, what="prediction", channels=None):
    """Values as integers, or raise naming where if one is not a finite non-negative integer up to int32's max.

    With channels, only the first that many channels (last axis) are checked; the others may hold anything.
    """
    values = np.asarray(values)
    # The whole array first: contiguous, fast. Only if that fails, the channels that count (strided, slow).
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):  # NaN, inf and huge values cast to garbage, and then differ
            ids = values.astype(np.int64)
        checked = values[..., :channels]
        if np.array_equal(ids, values) or np.array_equal(ids[..., :channels], checked):
            values = ids
        else:
            if not np.isfinite(checked).all():
                raise ValueError(f"{where}: {what} has non-finite values (NaN or inf)")
            bad = checked[checked != np.floor(checked)]
            if bad.size:
                raise ValueError(f"{where}: {what} has non-integer values (e.g. {bad.flat[0]:g})")
            # Left: integers beyond int64, which the range check below names.
    if values.size and (values.min() < 0 or values.max() > MAX_PRED_ID):
        low, high = values[..., :channels].min(), values[..., :channels].max()
        if low < 0:
            raise ValueError(f"{where}: {what} has negative values (min {low:g})")
        if high > MAX_PRED_ID:
            raise ValueError(f"{where}: {what} has values above {MAX_PRED_ID} (max {high:g})")
    # Integers of up to 32 bits mix with the int64 keys as int64; uint64 would turn them into floats.
    return values if values.dtype.kind in "iu" and values.dtype.itemsize <= 4 else values.astype(np.int64)


def truth_ids(mask, where):
    """A raw (H, W, 6) mask as uint16, all of it checked as the builder checks it."""
    values = np.asarray(mask)
    with np.errstate(invalid="ignore"):
        ids = values.astype(np.uint16)
    # Equal only if every value is an integer in 0..65535; else the builder's check names the problem.
    if not np.array_equal(ids, values):
        return pim.mask_to_ids(values, where)
    return ids


def hovernet_to_channels(instance, types, where="prediction"):
    """(H, W, 5) class channels from an instance map and a type map (0 background, 1..5 the classes).

    A nucleus goes, whole, to the channel of the type most of its pixels have (ties to the lower type);
    a nucleus whose pixels are mostly type 0 is dropped, as the type map calls it background.
    """
    instance = check_ids(instance, where, "instance channel")
    types = check_ids(types, where, "type channel")
    if types.max(initial=0) >= NUM_TYPES:
        raise ValueError(f"{where}: type channel has values above {NUM_TYPES - 1} (max {types.max()})")
    ids, n = _renumber(instance)
    votes = np.bincount(ids * NUM_TYPES + types.ravel(), minlength=(n + 1) * NUM_TYPES).reshape(n + 1, NUM_TYPES)
    kind = votes.argmax(axis=1)
    kind[0] = 0
    pixel_kind = kind[ids]
    channels = np.zeros((ids.size, pim.NUM_CLASS_CHANNELS), dtype=np.int64)
    kept = np.nonzero(pixel_kind)[0]
    channels[kept, pixel_kind[kept] - 1] = ids[kept]
    return channels.reshape(*instance.shape, pim.NUM_CLASS_CHANNELS)


def _check_dtype(path, dtype):
    if dtype.kind not in "biuf":
        raise pim.PanNukeFormatError(f"{path}: dtype {dtype} is not numeric")


def open_masks_prediction(path, n, size):
    """Memory-map a masks.npy of (n, H, W, >=5) predictions, after checking its header."""
    shape, dtype = pim.read_npy_header(path)
    _check_dtype(path, dtype)
    if len(shape) != 4 or shape[1:3] != size or shape[3] < pim.NUM_CLASS_CHANNELS:
        raise pim.PanNukeFormatError(
            f"{path}: shape {shape}, expected (N, {size[0]}, {size[1]}, C) with C >= {pim.NUM_CLASS_CHANNELS}"
        )
    if shape[0] != n:
        raise pim.PanNukeFormatError(f"{path}: {shape[0]} predictions, the split has {n} patches")
    return np.lib.format.open_memmap(path, mode="r")


def check_prediction_folder(folder, ids, size):
    """Check that folder holds exactly one <id>.npy of shape (H, W, >=2) per id, before anything is scored."""
    names = {name for name in os.listdir(folder) if name.endswith(".npy") and not name.startswith(".")}
    expected = {f"{patch}.npy" for patch in ids}
    missing = [f"{patch}.npy" for patch in ids if f"{patch}.npy" not in names]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} prediction(s) missing, the first {missing[0]}")
    extra = sorted(names - expected)
    if extra:
        raise ValueError(f"{folder}: {len(extra)} prediction(s) not in the split, the first {extra[0]}")
    for patch in ids:
        path = os.path.join(folder, f"{patch}.npy")
        shape, dtype = pim.read_npy_header(path)
        _check_dtype(path, dtype)
        if len(shape) != 3 or shape[:2] != size or shape[2] < 2:
            raise pim.PanNukeFormatError(
                f"{path}: prediction for {patch} has shape {shape}, expected ({size[0]}, {size[1]}, C) with "
                "instance and type as the last two channels"
            )


# ---------------------------------------------------------------------------------------------
# Scoring a split, one patch at a time, in this process or a pool.
# ---------------------------------------------------------------------------------------------


def _score_task(task):
    """(stop - start, 7) scores of rows start..stop of the split."""
    start, stop = task
    files, rows, pred = WORKER["files"], WORKER["rows"], WORKER["pred"]
    scores = np.empty((stop - start, len(SCORE_COLUMNS)))
    for k, (fold, index) in enumerate(rows[start:stop]):
        _, masks = opened(("fold", fold), lambda fold=fold: pim.open_fold(files[fold]))
        truth = truth_ids(masks[index], where=f"{files[fold]['masks']}: patch {index}")
        patch = pim.patch_id(fold, index)
        if pred["layout"] == "masks":
            array = opened(("prediction",), lambda: np.lib.format.open_memmap(pred["path"], mode="r"))
            where = f"{pred['path']}: {patch}"
            prediction = check_ids(array[start + k], where, channels=pim.NUM_CLASS_CHANNELS)
        else:
            path = os.path.join(pred["path"], f"{patch}.npy")
            array = np.load(path, allow_pickle=False)
            prediction = hovernet_to_channels(array[..., -2], array[..., -1], where=path)
        scores[k] = patch_scores(truth, prediction)
    return scores


def score_rows(files, rows, pred, num_proc=1, quiet=False):
    """(N, 7) scores of the split's rows [(fold, index), ...] against pred {"layout", "path"}."""
    tasks = [(s, min(s + TASK_PATCHES, len(rows))) for s in range(0, len(rows), TASK_PATCHES)]
    state = {"files": files, "rows": rows, "pred": pred}
    chunks = []
    with progress_bar(len(rows), "Evaluating", quiet) as bar:
        for chunk in run_tasks(_score_task, tasks, num_proc, state):
            chunks.append(chunk)
            bar.update(len(chunk))
    return np.concatenate(chunks) if chunks else np.empty((0, len(SCORE_COLUMNS)))


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    return value


def _cell(value):
    return "" if math.isnan(value) else repr(float(value))


def _shown(value):
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _write_atomically(path, write):
    """Write path through a temporary file beside it, so that no half-written report is ever left."""
    tmp = f"{path}.incomplete"
    try:
        with open(tmp, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_per_patch(path, rows, tissues, scores):
    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PER_PATCH_COLUMNS)
        for (fold, index), tissue, row in zip(rows, tissues, scores):
            writer.writerow([pim.patch_id(fold, index), fold, index, tissue, *map(_cell, row)])

    _write_atomically(path, write)


def report_lines(result):
    """The table printed on stdout."""
    lines = [
        f"split {result['split']} of config {result['config']}: {result['patches']} patches",
        "",
        f"mPQ  {_shown(result['mPQ'])}",
        f"bPQ  {_shown(result['bPQ'])}",
        "",
        f"{'class':<14} {'PQ':>8}",
    ]
    lines += [f"{name:<14} {_shown(value):>8}" for name, value in result["per_class"].items()]
    lines += ["", f"{'tissue':<14} {'patches':>7} {'mPQ':>8} {'bPQ':>8}"]
    lines += [
        f"{tissue:<14} {t['patches']:>7} {_shown(t['mPQ']):>8} {_shown(t['bPQ']):>8}"
        for tissue, t in result["per_tissue"].items()
    ]
    return lines


def _get_parser():
    parser = command_parser("evaluate", __doc__)
    parser.add_argument(
        "--pred",
        required=True,
        help="predictions: a masks.npy of (N, 256, 256, >=5) class channels in the split's row order, or a "
        "folder of <id>.npy, each (256, 256, ..., instance, type) as HoVer-Net writes them",
    )
    parser.add_argument(
        "--split", help="the split to score: train, validation (or valid), test (default); fold1..fold3 for folds"
    )
    parser.add_argument("--json", help="also write the results here as JSON")
    parser.add_argument("--per-patch", metavar="FILE.csv", help="also write each patch's scores here")
    add_source_arguments(parser, download=False, work="scoring")  # scoring reads the folds on disk
    return parser


def _check_args(parser, args):
    """Usage errors (exit 2): a source is required, and the split must exist in the config."""
    if not args.data_dir and not args.sample:
        parser.error("one of --data-dir or --sample is required")
    config = config_named(args.config)
    valid = pim.split_names(config)
    if args.split is None and config.split_by_fold:
        parser.error(f"--config {args.config} needs --split; valid: {', '.join(valid)}")
    split = SPLIT_ALIASES.get(args.split, args.split) if args.split else "test"
    if split not in valid:
        parser.error(f"unknown split {args.split!r} for --config {args.config}; valid: {', '.join(valid)}")
    args.split = split
    return config


def _check_output(path, option):
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(f"{path}: its folder does not exist ({option})")


def evaluate(args, config):
    _check_output(args.json, "--json")
    _check_output(args.per_patch, "--per-patch")
    folds = pim.split_folds(config, args.split)
    data_dir = resolve_source(args, folds, required=True)
    ratios = tuple(args.split_ratios)
    if not config.split_by_fold:
        pim.check_split_ratios(ratios)
    files = pim.find_folds([data_dir], folds)
    tissues = {fold: pim.check_fold(files[fold]) for fold in folds}
    rows = pim.split_members(config, tissues, args.split_seed, ratios)[args.split]
    if not rows:
        raise ValueError(f"split {args.split} has no patches with these split ratios {list(ratios)}")
    size = pim.read_npy_header(files[folds[0]]["masks"])[0][1:3]

    pred_path = os.path.abspath(args.pred)
    if os.path.isdir(pred_path):
        check_prediction_folder(pred_path, [pim.patch_id(*row) for row in rows], size)
        pred = {"layout": "folder", "path": pred_path}
    elif os.path.isfile(pred_path):
        open_masks_prediction(pred_path, len(rows), size)
        pred = {"layout": "masks", "path": pred_path}
    else:
        raise FileNotFoundError(f"{args.pred}: no such file or folder (--pred)")

    logger.info("scoring %d patches of split %s against %s", len(rows), args.split, pred_path)
    scores = score_rows(files, rows, pred, args.num_proc, args.quiet)
    row_tissues = [tissues[fold][index] for fold, index in rows]
    result = {
        **summarize(scores, row_tissues),
        "patches": len(rows),
        "split": args.split,
        "config": args.config,
        "split_seed": None if config.split_by_fold else args.split_seed,
        "split_ratios": None if config.split_by_fold else list(ratios),
        "source": {"data_dir": None if args.sample else data_dir, "sample": bool(args.sample)},
        "pred": {"path": pred_path, "layout": pred["layout"]},
        "version": __version__,
    }
    print("\n".join(report_lines(result)))
    if args.json:
        _write_atomically(args.json, lambda f: json.dump(_json_value(result), f, indent=2, allow_nan=False))
    if args.per_patch:
        write_per_patch(args.per_patch, rows, row_tissues, scores)
    return 0


def main(argv=None):
    parser = _get_parser()
    args = parser.parse_args(argv)
    config = _check_args(parser, args)
    return run_cli("evaluate", lambda a: evaluate(a, config), args)


if __name__ == "__main__":
    sys.exit(main())
