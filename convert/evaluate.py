"""Score nucleus predictions on a split, or the three-split protocol, with the numbers PanNuke papers report.

mPQ and bPQ are the official evaluation script's; detection and classification F1 HoVer-Net's
compute_stats.py's; with --metrics, DQ/SQ, HoVer-Net's instance statistics (Dice, AJI, AJI+), CellViT's
dataset values, CoNIC's mPQ+ and R², and the pixel and per-nucleus numbers of the foundation-model
benchmarks, each as its reference computes it (docs/evaluate.md). --bootstrap gives 95% intervals, --compare
a paired comparison with a second prediction.
"""

# This module is the command: arguments, opening the split, printing and writing. The metrics are in
# convert.panoptic, convert.instance, convert.detection, convert.pixel, convert.cells (their reductions in
# convert.metrics); the scoring loop in convert.scoring; what is written in convert.results.

import argparse
import logging
import math
import os
import sys

import pannuke_imagemask as pim

from . import __version__, detection, metrics, results
from .common import add_source_arguments, command_parser, config_named, resolve_source, run_cli
from .formats import FOLD_PROTOCOL
from .formats.coco import image_id as coco_image_id
from .predictions import DEFAULT_MAX_OVERLAP, DEFAULT_MIN_SCORE, LAYOUT_NAMES, open_prediction
from .predictions.classes import parse_class_map
from .scoring import score_rows

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"valid": "validation"}  # the exported folder's name for it
INSTANCE_LAYOUTS = ("coco", "yolo")  # the layouts that --min-score and --max-overlap rule


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
    parser.add_argument(
        "--metrics",
        metavar="all|LIST",
        help=f"the numbers to compute besides the headline (pannuke, hovernet): all, or a comma-separated list of "
        f"{', '.join(metrics.METRIC_NAMES)} (default: {', '.join(metrics.DEFAULT_METRICS)})",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="95%% percentile intervals of every number from N bootstrap replicates of the patches, resampled "
        "within each tissue (default: 0, none; 1000 with --compare)",
    )
    parser.add_argument(
        "--seed", type=int, default=metrics.DEFAULT_SEED, help="the seed of --bootstrap and --compare's resampling"
    )
    parser.add_argument(
        "--compare",
        metavar="PRED2",
        help="a second prediction of the same split: both scored, each number's difference with its paired "
        "bootstrap interval and paired permutation p-value",
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
    try:
        args.families = metrics.selected(args.metrics)
    except ValueError as exc:
        parser.error(str(exc))
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be a number of replicates (0 for none), got {args.bootstrap}")
    if args.protocol:
        if args.pred or args.split:
            parser.error("--protocol names the three splits' predictions itself: not with --pred or --split")
        if args.compare:
            parser.error("--compare compares two predictions of one split: not with --protocol")
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


def open_split(
    config, data_dir, split, pred, *, pred_format, split_seed, split_ratios, min_score, max_overlap, class_map
):
    """Everything a split's scoring needs, checked before any patch is scored: truth files, rows, prediction."""
    folds = pim.split_folds(config, split)
    ratios = tuple(split_ratios)
    if not config.split_by_fold:
        pim.check_split_ratios(ratios)
    files = pim.find_folds([data_dir], folds)
    tissues = {fold: pim.check_fold(files[fold]) for fold in folds}
    rows = pim.split_members(config, tissues, split_seed, ratios)[split]
    if not rows:
        raise ValueError(f"split {split} has no patches with these split ratios {list(ratios)}")
    size = pim.read_npy_header(files[folds[0]]["masks"])[0][1:3]
    patches = [(pim.patch_id(fold, index), coco_image_id(fold, index)) for fold, index in rows]
    prediction = open_prediction(
        os.path.abspath(pred),
        pred_format,
        patches,
        size,
        min_score=min_score,
        max_overlap=max_overlap,
        class_map=class_map,
    )
    return {
        "split": split,
        "config": config.name,
        "split_seed": None if config.split_by_fold else split_seed,
        "ratios": None if config.split_by_fold else list(ratios),
        "data_dir": data_dir,
        "files": files,
        "rows": rows,
        "tissues": [tissues[fold][index] for fold, index in rows],
        "prediction": prediction,
        "pred_options": {"min_score": min_score, "max_overlap": max_overlap},
    }


def score_split(opened, families, *, radius, num_proc, quiet, sample, bootstrap=0, seed=metrics.DEFAULT_SEED):
    """The run of an opened split: its result (as --json holds it) and its per-patch state rows."""
    prediction = opened["prediction"]
    for note in prediction.notes:
        logger.warning("%s: %s", prediction.path, note)
    logger.info("scoring %d patches of split %s against %s", len(opened["rows"]), opened["split"], prediction.path)
    state = score_rows(opened["files"], opened["rows"], prediction, families, radius, num_proc, quiet)
    pred = {"path": prediction.path, "layout": prediction.name, "classified": prediction.classified}
    if prediction.name in INSTANCE_LAYOUTS:
        pred.update(opened["pred_options"])
    result = {
        **results.split_result(families, state, opened["tissues"], prediction.classified, radius),
        "patches": len(opened["rows"]),
        "split": opened["split"],
        "config": opened["config"],
        "split_seed": opened["split_seed"],
        "split_ratios": opened["ratios"],
        "source": {"data_dir": None if sample else opened["data_dir"], "sample": bool(sample)},
        "pred": pred,
        "version": __version__,
    }
    if bootstrap:
        values = metrics.intervals(
            families, state, metrics.tissue_index(opened["tissues"]), prediction.classified, bootstrap, seed
        )
        result["intervals"] = interval_info(bootstrap, seed) | {"values": values}
    return {**opened, "result": result, "state": state, "families": families}


def interval_info(replicates, seed):
    return {
        "method": "percentile",
        "level": metrics.CONFIDENCE,
        "replicates": replicates,
        "seed": seed,
        "unit": "patches, resampled with replacement within each tissue (docs/evaluate.md)",
    }


def _options(args):
    """The plain values that open_split and score_split take, from the parsed arguments."""
    opening = {
        "pred_format": args.pred_format,
        "split_seed": args.split_seed,
        "split_ratios": args.split_ratios,
        "min_score": args.min_score,
        "max_overlap": args.max_overlap,
        "class_map": args.class_map or {},
    }
    scoring = {
        "radius": args.f1_radius,
        "num_proc": args.num_proc,
        "quiet": args.quiet,
        "sample": args.sample,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
    }
    return opening, scoring


def run_protocol(args, config, families):
    """Score the three splits' test folds, then print and write each split's result, their mean and std."""
    opening, scoring = _options(args)
    tests = {k: FOLD_PROTOCOL[k][2] for k in args.protocol}  # each split's test fold
    folds = sorted({fold for split in tests.values() for fold in pim.split_folds(config, split)})
    data_dir = resolve_source(args, folds, required=True)  # once: the sample's warning is said once
    opened = {}
    for k, pred in args.protocol.items():  # every prediction checked before any patch is scored
        opened[k] = open_split(config, data_dir, tests[k], pred, **opening)
    runs = {k: score_split(split, families, **scoring) for k, split in opened.items()}
    split_results = {f"split{k}": run["result"] for k, run in runs.items()}
    summary = results.protocol_summary(list(split_results.values()))
    print("\n".join(results.protocol_lines(summary, split_results)))
    report = {
        "splits": split_results,
        **summary,
        "std_ddof": results.PROTOCOL_STD_DDOF,
        "config": "folds",
        "version": __version__,
    }
    reports = [(args.json, results.json_report(report))] if args.json else []
    if args.per_patch:
        labelled = [(f"split{k}", run) for k, run in runs.items()]
        reports.append((args.per_patch, results.per_patch_report(labelled)))
    results.write_reports(reports)
    return 0


def run_split(args, config, families):
    """Score one split (and, with --compare, a second prediction of it), print, write."""
    opening, scoring = _options(args)
    data_dir = resolve_source(args, pim.split_folds(config, args.split), required=True)
    first = open_split(config, data_dir, args.split, args.pred, **opening)
    second = open_split(config, data_dir, args.split, args.compare, **opening) if args.compare else None
    run = score_split(first, families, **scoring)
    result = run["result"]
    print("\n".join(results.report_lines(result)))
    if second is not None:
        other = score_split(second, families, **{**scoring, "bootstrap": 0})
        if run["prediction"].classified != other["prediction"].classified:
            raise ValueError(f"{args.compare}: one prediction has classes and the other has none: not comparable")
        replicates = args.bootstrap or metrics.DEFAULT_REPLICATES
        tissues = metrics.tissue_index(first["tissues"])
        comparison = metrics.compare(
            families, run["state"], other["state"], tissues, run["prediction"].classified, replicates, args.seed
        )
        labels = ("pred", "compare")
        print("\n".join(results.compare_lines(comparison, labels)))
        result = {
            "pred": result,
            "compare": other["result"],
            "comparison": interval_info(replicates, args.seed)
            | {"test": "paired permutation, two-sided", "permutations": replicates, "values": comparison},
            "version": __version__,
        }
    reports = [(args.json, results.json_report(result))] if args.json else []
    if args.per_patch:
        runs = [(None, run)] if second is None else [("pred", run), ("compare", other)]
        reports.append((args.per_patch, results.per_patch_report(runs)))
    results.write_reports(reports)
    return 0


def evaluate(args, config):
    if not (math.isfinite(args.f1_radius) and args.f1_radius >= 0):
        raise ValueError(f"--f1-radius must be a non-negative number of pixels, got {args.f1_radius:g}")
    families = args.families
    _check_output(args.json, "--json")
    _check_output(args.per_patch, "--per-patch")
    if args.json and args.per_patch and os.path.abspath(args.json) == os.path.abspath(args.per_patch):
        raise ValueError(f"{args.json}: --json and --per-patch name the same file")
    if args.protocol:
        return run_protocol(args, config, families)
    return run_split(args, config, families)


def main(argv=None):
    parser = _get_parser()
    args = parser.parse_args(argv)
    config = _check_args(parser, args)
    return run_cli("evaluate", lambda a: evaluate(a, config), args)


if __name__ == "__main__":
    sys.exit(main())
