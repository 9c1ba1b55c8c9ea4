"""Score nucleus predictions on a split, or the three-split protocol, with the numbers PanNuke papers report.

mPQ and bPQ are the official evaluation script's, computed one patch at a time from the raw folds, with
pairwise IoU from one joint histogram per map, and defined where the official script crashes (a nucleus
wholly covered by a later channel, a map without background). Detection and classification F1 are
HoVer-Net's compute_stats.py's (convert/detection.py), from the same patches.
"""

import argparse
import csv
import json
import logging
import math
import os
import sys

import numpy as np

import pannuke_imagemask as pim

from . import __version__, detection
from .common import add_source_arguments, command_parser, config_named, progress_bar, resolve_source, run_cli
from .formats import FOLD_PROTOCOL
from .formats.coco import image_id as coco_image_id
from .pool import WORKER, opened, run_tasks
from .predictions import DEFAULT_MAX_OVERLAP, DEFAULT_MIN_SCORE, LAYOUT_NAMES, MAX_PRED_ID, open_prediction
from .predictions.classes import parse_class_map

logger = logging.getLogger(__name__)

MATCH_IOU = 0.5  # a pair matches when its IoU is strictly above this: such pairs are unique
SQ_EPSILON = 1.0e-6  # the official script's SQ denominator is TP + 1e-6, so a perfect score is 0.999999...
KEY_SPAN = MAX_PRED_ID + 1  # (channel, id) keys: channel * KEY_SPAN + id
DENSE_KEYS, DENSE_KEYS_PER_PIXEL = 1 << 16, 8  # below this many (channel, id) keys, number them densely
DENSE_PAIRS = 1 << 22  # above this many (true, pred) id pairs, count overlaps sparsely instead of densely
TASK_PATCHES = 32  # patches per task handed to a worker
TRUTH_PIECE = 1 << 15  # truth values cast and checked at a time: 256 KB of float64, within a core's L2 cache
SPLIT_ALIASES = {"valid": "validation"}  # the exported folder's name for it
INSTANCE_LAYOUTS = ("coco", "yolo")  # the layouts that --min-score and --max-overlap rule
PROTOCOL_DETECTION = ("f1", "precision", "recall", "type_accuracy")  # the F1 numbers the protocol averages
PROTOCOL_STD_DDOF = 0  # the population standard deviation over the three splits (np.std's default)

SCORE_COLUMNS = [f"pq_{name}" for name in pim.NUCLEUS_CLASSES] + ["mPQ", "bPQ"]
# A patch's detection counts in the per-patch CSV: HoVer-Net's TP (pairs), FP, FN and pairs of the same type,
# whose sums over the split give the F1 (a side without nuclei counts HoVer-Net's dummy point).
DETECTION_COLUMNS = {
    "det_tp": "pairs",
    "det_fp": "unpaired_pred",
    "det_fn": "unpaired_true",
    "det_same_type": "same_type",
}
PER_PATCH_COLUMNS = ["id", "fold", "index", "tissue", *SCORE_COLUMNS, *DETECTION_COLUMNS]


# ---------------------------------------------------------------------------------------------
# The metric: plain functions of numpy arrays.
# ---------------------------------------------------------------------------------------------


def _nuclei(channels, count):
    """The nuclei of channels 0..count-1 of (H, W, C), sparse: (positions, their numbers, nuclei per channel).

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
    if count * span <= DENSE_KEYS + DENSE_KEYS_PER_PIXEL * len(values):
        # Ids small beside the pixels (as PanNuke's): number the (channel, id) keys by one histogram, no sort.
        key = channel * span + values
        present = np.bincount(key, minlength=count * span).astype(bool)
        number = np.cumsum(present)[key]  # 1..n in (channel, id) order, as np.unique's inverse + 1
        return position, number, present.reshape(count, span).sum(axis=1)
    keys, number = np.unique(channel * KEY_SPAN + values, return_inverse=True)
    per_channel = np.bincount(keys // KEY_SPAN, minlength=count)
    return position, number.ravel() + 1, per_channel


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
    """([PQ of each class channel 0..count-1], binary PQ, binary maps) of (H, W, >=count) channels.

    The binary maps of truth and prediction are each (pixels, their nucleus numbers, nuclei per channel), as
    binary_points reads them.
    """
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
    binary = (true_pixel, true_top, true_count), (pred_pixel, pred_top, pred_count)
    return class_pq, _quality(seen_true, seen_pred, binary_iou), binary


def binary_points(pixel, number, per_channel, width):
    """(x, y) and type (channel + 1) of each nucleus of a binary map, in number order: the F1's nuclei.

    For the truth these are the nuclei of the builder's instance_mask (the later channel wins, a nucleus
    wholly covered is gone), each at the mean (x, y) of its pixels there.
    """
    n = int(per_channel.sum())
    area = np.bincount(number, minlength=n + 1)
    rows, cols = np.divmod(pixel, width)
    x = np.bincount(number, weights=cols, minlength=n + 1)
    y = np.bincount(number, weights=rows, minlength=n + 1)
    seen = np.flatnonzero(area[1:]) + 1
    types = np.repeat(np.arange(1, len(per_channel) + 1), per_channel)
    return np.stack([x[seen] / area[seen], y[seen] / area[seen]], axis=1), types[seen - 1]


def panoptic_quality(true, pred):
    """PQ of two (H, W) maps of non-negative integer ids (0 background, each other id a nucleus); NaN if true has none."""
    return _qualities(true[..., None], pred[..., None], 1)[0][0]


def patch_scores(true, pred):
    """[PQ of each class 0..4, patch mPQ, patch bPQ] of one patch's (H, W, >=5) truth and prediction ids.

    Ids are non-negative integers (check_ids); channels after 0..4 are not read.
    """
    class_pq, binary_pq, _ = _qualities(true, pred, pim.NUM_CLASS_CHANNELS)
    return np.array([*class_pq, nanmean(class_pq), binary_pq])


def score_patch(true, prediction, radius=detection.RADIUS, classified=True):
    """(patch_scores, F1 counts in detection.COUNT_COLUMNS order) of truth ids and a PatchPrediction.

    Without classes (classified False) the class PQs and mPQ are NaN: not available.
    """
    class_pq, binary_pq, (true_binary, pred_binary) = _qualities(true, prediction.channels, pim.NUM_CLASS_CHANNELS)
    if not classified:
        class_pq = [math.nan] * len(class_pq)
    true_xy, true_types = binary_points(*true_binary, true.shape[1])
    if prediction.centroids is None:  # the nuclei of the channels' binary map: made here with it, not twice
        pred_xy, pred_types = binary_points(*pred_binary, true.shape[1])
    else:
        pred_xy, pred_types = prediction.centroids, prediction.types
    counts = detection.pair_counts(true_xy, true_types, pred_xy, pred_types, radius)
    return np.array([*class_pq, nanmean(class_pq), binary_pq]), counts


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
    flat = values.reshape(-1)
    ids = np.empty(flat.shape, dtype=np.uint16)
    # Cast and compare a piece at a time while it is in the cache: a fifth faster than whole-patch passes.
    # Equal only if every value is an integer in 0..65535; else the builder's check names the problem.
    with np.errstate(invalid="ignore"):
        for start in range(0, flat.size, TRUTH_PIECE):
            piece, out = flat[start : start + TRUTH_PIECE], ids[start : start + TRUTH_PIECE]
            np.copyto(out, piece, casting="unsafe")
            if not np.equal(out, piece).all():
                return pim.mask_to_ids(values, where)
    return ids.reshape(values.shape)


# ---------------------------------------------------------------------------------------------
# Scoring a split, one patch at a time, in this process or a pool.
# ---------------------------------------------------------------------------------------------


def _score_task(task):
    """(scores (n, 7), F1 counts (n, len(COUNT_COLUMNS))) of rows start..stop of the split."""
    start, stop = task
    files, rows, prediction, radius = (WORKER[key] for key in ("files", "rows", "prediction", "radius"))
    scores = np.empty((stop - start, len(SCORE_COLUMNS)))
    counts = np.empty((stop - start, len(detection.COUNT_COLUMNS)), dtype=np.int64)
    for k, (fold, index) in enumerate(rows[start:stop]):
        _, masks = opened(("fold", fold), lambda fold=fold: pim.open_fold(files[fold]))
        truth = truth_ids(masks[index], where=f"{files[fold]['masks']}: patch {index}")
        scores[k], counts[k] = score_patch(truth, prediction.read(start + k), radius, prediction.classified)
    return scores, counts


def score_rows(files, rows, prediction, radius=detection.RADIUS, num_proc=1, quiet=False):
    """(scores (N, 7), F1 counts (N, len(COUNT_COLUMNS))) of the split's rows [(fold, index), ...].

    The per-patch counts come from the workers; the parent only sums them (detection.summarize).
    """
    tasks = [(s, min(s + TASK_PATCHES, len(rows))) for s in range(0, len(rows), TASK_PATCHES)]
    state = {"files": files, "rows": rows, "prediction": prediction, "radius": radius}
    scores = [np.empty((0, len(SCORE_COLUMNS)))]
    counts = [np.empty((0, len(detection.COUNT_COLUMNS)), dtype=np.int64)]
    with progress_bar(len(rows), "Evaluating", quiet) as bar:
        for chunk_scores, chunk_counts in run_tasks(_score_task, tasks, num_proc, state):
            scores.append(chunk_scores)
            counts.append(chunk_counts)
            bar.update(len(chunk_scores))
    return np.concatenate(scores), np.concatenate(counts)


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


def _write_reports(reports):
    """Write each (path, write) through a temporary file beside it, renamed only once all are complete.

    No half-written report is ever left, and a failure while writing one leaves none of them.
    """
    done = []
    try:
        for path, write in reports:
            tmp = f"{path}.incomplete"
            done.append(tmp)
            with open(tmp, "w", newline="") as f:
                write(f)
        for (path, _), tmp in zip(reports, done):
            os.replace(tmp, path)
    finally:
        for tmp in done:
            if os.path.exists(tmp):
                os.remove(tmp)


def _json_report(result):
    return lambda f: json.dump(_json_value(result), f, indent=2, allow_nan=False)


def _per_patch_report(runs):
    """The per-patch CSV of [(split label or None, run), ...]: one row per patch, a split column if labelled."""

    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        labelled = runs[0][0] is not None
        writer.writerow((["split"] if labelled else []) + PER_PATCH_COLUMNS)
        for label, run in runs:
            found = run["counts"][:, [detection.COUNT_COLUMNS.index(c) for c in DETECTION_COLUMNS.values()]]
            if not run["result"]["pred"]["classified"]:
                found = found.astype(object)
                found[:, list(DETECTION_COLUMNS).index("det_same_type")] = ""  # no types: not available
            for (fold, index), tissue, row, counts in zip(run["rows"], run["tissues"], run["scores"], found):
                cells = [pim.patch_id(fold, index), fold, index, tissue, *map(_cell, row), *counts.tolist()]
                writer.writerow(([label] if labelled else []) + cells)

    return write


def report_lines(result):
    """The table printed on stdout."""
    found = result["detection"]
    lines = [
        f"split {result['split']} of config {result['config']}: {result['patches']} patches",
        "",
        f"mPQ  {_shown(result['mPQ'])}",
        f"bPQ  {_shown(result['bPQ'])}",
        "",
        (
            f"detection F1   {_shown(found['f1'])}  (precision {_shown(found['precision'])}, "
            f"recall {_shown(found['recall'])}; radius {found['radius']:g} px)"
        ),
        f"type accuracy  {_shown(found['type_accuracy'])}",
        "",
        f"{'class':<14} {'PQ':>8} {'F1':>8}",
    ]
    lines += [
        f"{name:<14} {_shown(value):>8} {_shown(result['f1_per_class'][name]):>8}"
        for name, value in result["per_class"].items()
    ]
    lines += ["", f"{'tissue':<14} {'patches':>7} {'mPQ':>8} {'bPQ':>8}"]
    lines += [
        f"{tissue:<14} {t['patches']:>7} {_shown(t['mPQ']):>8} {_shown(t['bPQ']):>8}"
        for tissue, t in result["per_tissue"].items()
    ]
    return lines


def _class_map(text):
    try:
        return parse_class_map(text)
    except ValueError as exc:  # argparse shows an ArgumentTypeError's own words (exit 2)
        raise argparse.ArgumentTypeError(str(exc)) from None


def _get_parser():
    parser = command_parser("evaluate", __doc__)
    parser.add_argument(
        "--pred",
        help="predictions of the split, as a framework writes them (see --pred-format): e.g. a masks.npy of "
        "(N, 256, 256, >=5) class channels in the split's row order, or a folder of <id>.npy (..., instance, "
        "type) as HoVer-Net holds them",
    )
    parser.add_argument(
        "--pred-format",
        choices=LAYOUT_NAMES,
        help="the layout of --pred (default: recognised from what it holds)",
    )
    parser.add_argument(
        "--protocol",
        nargs=3,
        metavar=("split1=PRED", "split2=PRED", "split3=PRED"),
        help="score PanNuke's three-split protocol at once: split 1 and 2 on fold 3, split 3 on fold 1, then the "
        "mean and standard deviation over the three (instead of --pred and --split; --config folds)",
    )
    parser.add_argument(
        "--split", help="the split to score: train, validation (or valid), test (default); fold1..fold3 for folds"
    )
    parser.add_argument(
        "--f1-radius",
        type=float,
        default=detection.RADIUS,
        help="detection F1: after the optimal assignment of predicted to true centroids, pairs farther apart "
        "than this many pixels are dropped (12 for PanNuke's 40x, as HoVer-Net; 6 at 20x, as CellViT)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_SCORE,
        help="coco, yolo: instances scored below this are not kept",
    )
    parser.add_argument(
        "--max-overlap",
        type=float,
        default=DEFAULT_MAX_OVERLAP,
        help="coco, yolo: an instance whose overlap with the pixels of higher-scored ones is more than this "
        "fraction of its area is skipped",
    )
    parser.add_argument(
        "--class-map",
        type=_class_map,
        metavar="NAME=CLASS,...",
        help="geojson, cellvit: the class names of the predictions that are not ours, each to one of ours "
        "(neoplastic, inflammatory, connective, dead, epithelial) or none (a nucleus without a class)",
    )
    parser.add_argument("--json", help="also write the results here as JSON")
    parser.add_argument("--per-patch", metavar="FILE.csv", help="also write each patch's scores here")
    # Scoring reads the folds on disk; no --config default in the parser: --protocol implies folds, else part1.
    add_source_arguments(parser, download=False, work="scoring", config_default="part1; folds with --protocol")
    return parser


def _protocol_paths(parser, values):
    """{1: PRED, 2: PRED, 3: PRED} of --protocol split1=PRED split2=PRED split3=PRED, in any order."""
    paths = {}
    for value in values:
        name, sep, path = value.partition("=")
        split = name[len("split") :] if name.startswith("split") else ""
        if not sep or not path or split not in ("1", "2", "3") or int(split) in paths:
            parser.error(f"--protocol wants split1=PRED split2=PRED split3=PRED, each once; got {' '.join(values)}")
        paths[int(split)] = path
    return dict(sorted(paths.items()))


def _check_args(parser, args):
    """Usage errors (exit 2): a source is required, and the split must exist in the config."""
    if not args.data_dir and not args.sample:
        parser.error("one of --data-dir or --sample is required")
    if args.protocol:
        if args.pred or args.split:
            parser.error("--protocol names the three splits' predictions itself: not with --pred or --split")
        if args.config not in (None, "folds"):
            parser.error(f"--protocol scores the folds of --config folds, not --config {args.config}")
        args.config = "folds"
        args.protocol = _protocol_paths(parser, args.protocol)
        return config_named(args.config)
    if not args.pred:
        parser.error("one of --pred or --protocol is required")
    args.config = args.config or "part1"
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


def open_split(args, config, data_dir, split, pred):
    """Everything a split's scoring needs, checked before any patch is scored: truth files, rows, prediction."""
    folds = pim.split_folds(config, split)
    ratios = tuple(args.split_ratios)
    if not config.split_by_fold:
        pim.check_split_ratios(ratios)
    files = pim.find_folds([data_dir], folds)
    tissues = {fold: pim.check_fold(files[fold]) for fold in folds}
    rows = pim.split_members(config, tissues, args.split_seed, ratios)[split]
    if not rows:
        raise ValueError(f"split {split} has no patches with these split ratios {list(ratios)}")
    size = pim.read_npy_header(files[folds[0]]["masks"])[0][1:3]

    pred_path = os.path.abspath(pred)
    patches = [(pim.patch_id(fold, index), coco_image_id(fold, index)) for fold, index in rows]
    options = {"min_score": args.min_score, "max_overlap": args.max_overlap, "class_map": args.class_map}
    prediction = open_prediction(pred_path, args.pred_format, patches, size, **options)
    return {
        "split": split,
        "data_dir": data_dir,
        "files": files,
        "rows": rows,
        "tissues": [tissues[fold][index] for fold, index in rows],
        "ratios": ratios,
        "prediction": prediction,
    }


def score_split(args, config, opened):
    """The result of an opened split (as --json holds it), with its per-patch scores and F1 counts as
    run["scores"] and run["counts"]."""
    prediction = opened["prediction"]
    for note in prediction.notes:
        logger.warning("%s: %s", prediction.path, note)
    logger.info("scoring %d patches of split %s against %s", len(opened["rows"]), opened["split"], prediction.path)
    scores, counts = score_rows(opened["files"], opened["rows"], prediction, args.f1_radius, args.num_proc, args.quiet)
    pred = {"path": prediction.path, "layout": prediction.name, "classified": prediction.classified}
    if prediction.name in INSTANCE_LAYOUTS:
        pred.update(min_score=args.min_score, max_overlap=args.max_overlap)
    result = {
        **summarize(scores, opened["tissues"]),
        **detection.summarize(counts, prediction.classified, args.f1_radius),
        "patches": len(opened["rows"]),
        "split": opened["split"],
        "config": args.config,
        "split_seed": None if config.split_by_fold else args.split_seed,
        "split_ratios": None if config.split_by_fold else list(opened["ratios"]),
        "source": {"data_dir": None if args.sample else opened["data_dir"], "sample": bool(args.sample)},
        "pred": pred,
        "version": __version__,
    }
    return {"result": result, "rows": opened["rows"], "tissues": opened["tissues"], "scores": scores, "counts": counts}


def _across(results, reduce):
    """reduce (a list of 3 values -> one) applied to each number the papers' tables give, over the splits."""

    def over(get):
        return reduce([get(result) for result in results])

    return {
        "mPQ": over(lambda r: r["mPQ"]),
        "bPQ": over(lambda r: r["bPQ"]),
        "per_class": {name: over(lambda r, n=name: r["per_class"][n]) for name in pim.NUCLEUS_CLASSES},
        "detection": {key: over(lambda r, k=key: r["detection"][k]) for key in PROTOCOL_DETECTION},
        "f1_per_class": {name: over(lambda r, n=name: r["f1_per_class"][n]) for name in pim.NUCLEUS_CLASSES},
        "per_tissue": {
            tissue: {key: over(lambda r, t=tissue, k=key: r["per_tissue"][t][k]) for key in ("mPQ", "bPQ")}
            for tissue in pim.TISSUES
        },
    }


def protocol_summary(results):
    """{"mean": ..., "std": ...} over the three splits' results; NaN wherever a split has NaN.

    The standard deviation is the population one (np.std, ddof=0), over the three splits.
    """
    return {
        "mean": _across(results, lambda values: float(np.mean(values))),
        "std": _across(results, lambda values: float(np.std(values, ddof=PROTOCOL_STD_DDOF))),
    }


def protocol_lines(summary, results):
    """The protocol's table: each number of each split, their mean and std."""
    labels = list(results)
    tests = ", ".join(f"{label} on {result['split']}" for label, result in zip(labels, results.values()))
    lines = [
        f"protocol of config folds: {tests}",
        "",
        f"{'':<26}" + "".join(f"{c:>9}" for c in [*labels, "mean", "std"]),
    ]
    values = [*results.values(), summary["mean"], summary["std"]]

    def row(label, get):
        lines.append(f"{label:<26}" + "".join(f"{_shown(get(v)):>9}" for v in values))

    row("mPQ", lambda v: v["mPQ"])
    row("bPQ", lambda v: v["bPQ"])
    for key in PROTOCOL_DETECTION:
        row(f"detection {key.replace('_', ' ')}", lambda v, k=key: v["detection"][k])
    for name in pim.NUCLEUS_CLASSES:
        row(f"PQ {name}", lambda v, n=name: v["per_class"][n])
    for name in pim.NUCLEUS_CLASSES:
        row(f"F1 {name}", lambda v, n=name: v["f1_per_class"][n])
    for tissue in pim.TISSUES:
        for key in ("mPQ", "bPQ"):
            row(f"{key} {tissue}", lambda v, t=tissue, k=key: v["per_tissue"][t][k])
    lines += ["", "std: population standard deviation (ddof=0) over the three splits"]
    return lines


def run_protocol(args, config):
    """Score the three splits' test folds, then print and write each split's result, their mean and std."""
    tests = {k: FOLD_PROTOCOL[k][2] for k in args.protocol}  # each split's test fold
    folds = sorted({fold for split in tests.values() for fold in pim.split_folds(config, split)})
    data_dir = resolve_source(args, folds, required=True)  # once: the sample's warning is said once
    opened = {}
    for k, pred in args.protocol.items():  # every prediction checked before any patch is scored
        opened[k] = open_split(args, config, data_dir, tests[k], pred)
    runs = {k: score_split(args, config, split) for k, split in opened.items()}
    results = {f"split{k}": run["result"] for k, run in runs.items()}
    summary = protocol_summary(list(results.values()))
    print("\n".join(protocol_lines(summary, results)))
    report = {
        "splits": results,
        **summary,
        "std_ddof": PROTOCOL_STD_DDOF,
        "config": "folds",
        "version": __version__,
    }
    reports = [(args.json, _json_report(report))] if args.json else []
    if args.per_patch:
        reports.append((args.per_patch, _per_patch_report([(f"split{k}", run) for k, run in runs.items()])))
    _write_reports(reports)
    return 0


def evaluate(args, config):
    if not (math.isfinite(args.f1_radius) and args.f1_radius >= 0):
        raise ValueError(f"--f1-radius must be a non-negative number of pixels, got {args.f1_radius:g}")
    _check_output(args.json, "--json")
    _check_output(args.per_patch, "--per-patch")
    if args.json and args.per_patch and os.path.abspath(args.json) == os.path.abspath(args.per_patch):
        raise ValueError(f"{args.json}: --json and --per-patch name the same file")
    if args.protocol:
        return run_protocol(args, config)
    data_dir = resolve_source(args, pim.split_folds(config, args.split), required=True)
    run = score_split(args, config, open_split(args, config, data_dir, args.split, args.pred))
    print("\n".join(report_lines(run["result"])))
    reports = [(args.json, _json_report(run["result"]))] if args.json else []
    if args.per_patch:
        reports.append((args.per_patch, _per_patch_report([(None, run)])))
    _write_reports(reports)
    return 0


def main(argv=None):
    parser = _get_parser()
    args = parser.parse_args(argv)
    config = _check_args(parser, args)
    return run_cli("evaluate", lambda a: evaluate(a, config), args)


if __name__ == "__main__":
    sys.exit(main())
