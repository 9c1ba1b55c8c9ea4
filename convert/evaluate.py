"""Score nucleus predictions on a split with PanNuke's mPQ and bPQ, the numbers every PanNuke paper reports.

The metric is the official evaluation script's, computed one patch at a time from the raw folds, with
pairwise IoU from one joint histogram per map, and defined where the official script crashes (a nucleus
wholly covered by a later channel, a map without background).
"""

import argparse
import csv
import json
import logging
import math
import multiprocessing
import os
import signal
import sys

import numpy as np
from tqdm import tqdm

import pannuke_imagemask as pim

from . import __version__
from .common import PROG, HelpFormatter, add_source_arguments, run_cli, sample_dir

# The prediction layouts live in convert/predictions/; these names stay importable from here.
from .predictions import check_ids, check_prediction_folder, hovernet_to_channels, open_masks_prediction

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
# The ground truth's checks (the prediction layouts: convert/predictions/).
# ---------------------------------------------------------------------------------------------


def truth_ids(mask, where):
    """A raw (H, W, 6) mask as uint16, all of it checked as the builder checks it."""
    values = np.asarray(mask)
    with np.errstate(invalid="ignore"):
        ids = values.astype(np.uint16)
    # Equal only if every value is an integer in 0..65535; else the builder's check names the problem.
    if not np.array_equal(ids, values):
        return pim.mask_to_ids(values, where)
    return ids


# ---------------------------------------------------------------------------------------------
# Scoring a split, one patch at a time, in this process or a pool.
# ---------------------------------------------------------------------------------------------

# Per-process state: the rows to score and where their truth and prediction are; arrays opened lazily.
_WORKER = {}


def _init_worker(state):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _WORKER.update(state)


def _opened(key, opener):
    if key not in _WORKER:
        _WORKER[key] = opener()
    return _WORKER[key]


def _score_task(task):
    """(stop - start, 7) scores of rows start..stop of the split."""
    start, stop = task
    files, rows, pred = _WORKER["files"], _WORKER["rows"], _WORKER["pred"]
    scores = np.empty((stop - start, len(SCORE_COLUMNS)))
    for k, (fold, index) in enumerate(rows[start:stop]):
        _, masks = _opened(("fold", fold), lambda fold=fold: pim.open_fold(files[fold]))
        truth = truth_ids(masks[index], where=f"{files[fold]['masks']}: patch {index}")
        patch = pim.patch_id(fold, index)
        if pred["layout"] == "masks":
            array = _opened(("prediction",), lambda: np.lib.format.open_memmap(pred["path"], mode="r"))
            where = f"{pred['path']}: {patch}"
            prediction = check_ids(array[start + k], where, channels=pim.NUM_CLASS_CHANNELS)
        else:
            path = os.path.join(pred["path"], f"{patch}.npy")
            array = np.load(path, allow_pickle=False)
            prediction = hovernet_to_channels(array[..., -2], array[..., -1], where=path)
        scores[k] = patch_scores(truth, prediction)
    return scores


def _run_tasks(tasks, num_proc, state):
    """Each task's scores, in task order, from this process or a pool of num_proc forked workers."""
    if num_proc <= 1:
        _WORKER.update(state)
        try:
            yield from map(_score_task, tasks)
        finally:
            _WORKER.clear()  # no memory map outlives the command
        return
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    with context.Pool(num_proc, _init_worker, (state,)) as pool:
        yield from pool.imap(_score_task, tasks)


def score_rows(files, rows, pred, num_proc=1, quiet=False):
    """(N, 7) scores of the split's rows [(fold, index), ...] against pred {"layout", "path"}."""
    tasks = [(s, min(s + TASK_PATCHES, len(rows))) for s in range(0, len(rows), TASK_PATCHES)]
    state = {"files": files, "rows": rows, "pred": pred}
    chunks = []
    with tqdm(total=len(rows), unit="patch", desc="Evaluating", disable=True if quiet else None) as bar:
        for chunk in _run_tasks(tasks, num_proc, state):
            chunks.append(chunk)
            bar.update(len(chunk))
    return np.concatenate(chunks) if chunks else np.empty((0, len(SCORE_COLUMNS)))


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def split_names(config):
    if config.split_by_fold:
        return [f"fold{fold}" for fold in config.folds]
    return list(pim.SPLITS)


def folds_needed(config, split):
    """The folds whose files a split needs: with --config folds only its own, so one downloaded fold will do."""
    return (int(split[len("fold") :]),) if config.split_by_fold else config.folds


def split_rows(config, tissues, split, seed, ratios):
    """The split's (fold, index) rows in (fold, index) order, as the builder makes them."""
    if config.split_by_fold:
        (fold,) = tissues
        return [(fold, index) for index in range(len(tissues[fold]))]
    return pim.assign_splits(tissues, seed, ratios)[split]


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
    parser = argparse.ArgumentParser(prog=f"{PROG} evaluate", description=__doc__, formatter_class=HelpFormatter)
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
    add_source_arguments(parser)
    # The shared help says a missing source means a download; scoring needs the folds on disk.
    parser._option_string_actions["--data-dir"].help = "folder with the unpacked PanNuke folds (this or --sample)"
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _check_args(parser, args):
    """Usage errors (exit 2): a source is required, and the split must exist in the config."""
    if not args.data_dir and not args.sample:
        parser.error("one of --data-dir or --sample is required")
    config = next(c for c in pim.PanNukeImageMask.BUILDER_CONFIGS if c.name == args.config)
    valid = split_names(config)
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
    if args.num_proc < 1:
        raise ValueError(f"--num-proc must be at least 1, got {args.num_proc}")
    _check_output(args.json, "--json")
    _check_output(args.per_patch, "--per-patch")
    if args.sample:
        data_dir = sample_dir(config.folds, args.cache_dir)
        logger.warning("using the built-in sample: FAKE patches, not PanNuke data")
    else:
        data_dir = os.path.abspath(args.data_dir)
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"{data_dir}: no such folder (--data-dir)")
    ratios = tuple(args.split_ratios)
    if not config.split_by_fold:
        pim.check_split_ratios(ratios)
    folds = folds_needed(config, args.split)
    files = pim.find_folds([data_dir], folds)
    tissues = {fold: pim.check_fold(files[fold]) for fold in folds}
    rows = split_rows(config, tissues, args.split, args.split_seed, ratios)
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
