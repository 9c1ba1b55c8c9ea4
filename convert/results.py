"""What evaluate reports: the result of a split as --json holds it, the printed tables, the per-patch CSV, the
protocol's mean and standard deviation. Plain values in; no argparse, no scoring.
"""

import csv
import json
import math
import os

import numpy as np

import pannuke_imagemask as pim

from . import detection, metrics

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
# The compact block under the headline: (label, family, path in its numbers), printed when computed.
SECOND_BLOCK = [
    ("PanNuke mDQ / mSQ", "pannuke", [("mDQ",), ("mSQ",)]),
    ("PanNuke bDQ / bSQ", "pannuke", [("bDQ",), ("bSQ",)]),
    ("HoVer-Net Dice / AJI / AJI+", "hovernet_inst", [("dice1",), ("aji",), ("aji_plus",)]),
    ("HoVer-Net DQ / SQ / PQ", "hovernet_inst", [("DQ",), ("SQ",), ("PQ",)]),
    ("CellViT image-mean bPQ / mPQ", "cellvit", [("bPQ",), ("mPQ",)]),
    ("CellViT Dice / Jaccard", "cellvit", [("binary_dice",), ("binary_jaccard",)]),
    ("CoNIC mPQ+ / R2 / PQ", "conic", [("mPQ+",), ("R2",), ("PQ",)]),
    (
        "THUNDER acc / bal. acc / F1 / Jacc.",
        "thunder",
        [("accuracy",), ("balanced_accuracy",), ("f1_macro",), ("jaccard_macro",)],
    ),
    ("PFM-DenseBench mIoU / mDice / FWIoU", "pfm_densebench", [("miou",), ("mdice",), ("fwiou",)]),
    ("PathoCellBench F1 macro / micro", "pathocellbench", [("f1_macro",), ("f1_micro",)]),
]
HEADLINE = [
    ("mPQ", "pannuke", ("mPQ",)),
    ("bPQ", "pannuke", ("bPQ",)),
    ("F1", "hovernet", ("f1",)),
    ("type accuracy", "hovernet", ("type_accuracy",)),
]


def to_floats(tree, replicate=0):
    """The nested numbers of one replicate as Python floats (matrices as lists)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = to_floats(value, replicate)
        else:
            value = np.asarray(value)[replicate]
            out[key] = value.tolist() if np.ndim(value) else float(value)
    return out


def split_result(families, state, tissues, classified, radius):
    """The numbers of a split's state rows: today's keys (mPQ, bPQ, per_class, per_tissue, detection,
    f1_per_class) and "metrics", every family's numbers with its reference."""
    index = metrics.tissue_index(tissues)
    sums = metrics.tissue_sums(state, index)
    numbers = to_floats(metrics.reduce_sums(families, sums, classified))
    pannuke, hovernet = numbers["pannuke"], numbers["hovernet"]
    per_tissue = {
        tissue: {
            "patches": int(sums[0, t, 0]),
            "mPQ": pannuke["per_tissue"][tissue]["mPQ"],
            "bPQ": pannuke["per_tissue"][tissue]["bPQ"],
        }
        for t, tissue in enumerate(pim.TISSUES)
    }
    # The type confusion of HoVer-Net's paired nuclei (rows true type, columns predicted, 0 = none or the
    # dummy point), and the unpaired true (missed) and predicted (spurious) nuclei per class.
    confusion = {
        "labels": ["none", *pim.NUCLEUS_CLASSES],
        "paired": hovernet.pop("confusion"),
        "missed": hovernet.pop("missed"),
        "spurious": hovernet.pop("spurious"),
    }
    hovernet["confusion"] = confusion
    for family in families:
        numbers[family.name] = {"reference": family.reference, **numbers[family.name]}
    return {
        "mPQ": pannuke["mPQ"],
        "bPQ": pannuke["bPQ"],
        "per_class": {name: pannuke["per_class"][name]["PQ"] for name in pim.NUCLEUS_CLASSES},
        "per_tissue": per_tissue,
        "detection": {key: hovernet[key] for key in ("f1", "precision", "recall", "type_accuracy")}
        | {"radius": float(radius)},
        "f1_per_class": dict(hovernet["per_class"]),
        "metrics": numbers,
    }


def patch_table(families, state):
    """(N, 7) [PQ of classes 0..4, mPQ, bPQ] (NaN where not counted) and (N, 4) detection counts per patch."""
    part = state[:, metrics.layout(families)["pannuke"]]
    columns = metrics.panoptic.PANNUKE_COLUMNS
    names = [f"{name}_PQ" for name in pim.NUCLEUS_CLASSES] + ["mPQ", "bPQ"]
    scores = np.stack(
        [np.where(part[:, columns.index(f"{n}_counted")] > 0, part[:, columns.index(n)], np.nan) for n in names], axis=1
    )
    hovernet = state[:, metrics.layout(families)["hovernet"]]
    counts = hovernet[:, [detection.COUNT_COLUMNS.index(c) for c in DETECTION_COLUMNS.values()]].astype(np.int64)
    return scores, counts


def json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def shown(value):
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _cell(value):
    return "" if math.isnan(value) else repr(float(value))


def write_reports(reports):
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


def json_report(result):
    return lambda f: json.dump(json_value(result), f, indent=2, allow_nan=False)


def per_patch_report(runs):
    """The per-patch CSV of [(split label or None, run), ...]: one row per patch, a split column if labelled."""

    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        labelled = runs[0][0] is not None
        writer.writerow((["split"] if labelled else []) + PER_PATCH_COLUMNS)
        for label, run in runs:
            scores, found = patch_table(run["families"], run["state"])
            if not run["result"]["pred"]["classified"]:
                found = found.astype(object)
                found[:, list(DETECTION_COLUMNS).index("det_same_type")] = ""  # no types: not available
            for (fold, index), tissue, row, counts in zip(run["rows"], run["tissues"], scores, found):
                cells = [pim.patch_id(fold, index), fold, index, tissue, *map(_cell, row), *counts.tolist()]
                writer.writerow(([label] if labelled else []) + cells)

    return write


def _get(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _interval_text(result, family, path):
    interval = _get(result.get("intervals", {}), ("values", family, *path))
    return f"  [{shown(interval[0])}, {shown(interval[1])}]" if interval else ""


def report_lines(result):
    """The table printed on stdout: today's headline, the second block, per class and per tissue."""
    found = result["detection"]
    intervals = lambda family, *path: _interval_text(result, family, path)
    lines = [
        f"split {result['split']} of config {result['config']}: {result['patches']} patches",
        "",
        f"mPQ  {shown(result['mPQ'])}{intervals('pannuke', 'mPQ')}",
        f"bPQ  {shown(result['bPQ'])}{intervals('pannuke', 'bPQ')}",
        "",
        (
            f"detection F1   {shown(found['f1'])}  (precision {shown(found['precision'])}, "
            f"recall {shown(found['recall'])}; radius {found['radius']:g} px){intervals('hovernet', 'f1')}"
        ),
        f"type accuracy  {shown(found['type_accuracy'])}{intervals('hovernet', 'type_accuracy')}",
    ]
    second = []
    for label, family, paths in SECOND_BLOCK:
        numbers = result["metrics"].get(family)
        if numbers is not None:
            second.append(f"{label:<36} " + " / ".join(shown(_get(numbers, path)) for path in paths))
    if second:
        lines += ["", *second]
    lines += ["", f"{'class':<14} {'PQ':>8} {'F1':>8}"]
    lines += [
        f"{name:<14} {shown(value):>8} {shown(result['f1_per_class'][name]):>8}"
        for name, value in result["per_class"].items()
    ]
    lines += ["", f"{'tissue':<14} {'patches':>7} {'mPQ':>8} {'bPQ':>8}"]
    lines += [
        f"{tissue:<14} {t['patches']:>7} {shown(t['mPQ']):>8} {shown(t['bPQ']):>8}"
        for tissue, t in result["per_tissue"].items()
    ]
    if "intervals" in result:
        info = result["intervals"]
        lines += [
            "",
            (
                f"intervals: {info['level']:.0%} {info['method']}, {info['replicates']} replicates of the "
                f"patches within each tissue, seed {info['seed']}"
            ),
        ]
    return lines


def compare_lines(comparison, labels):
    """The comparison table: for each headline number, both values, the difference, its interval and p."""
    lines = ["", f"{'':<16}{labels[0]:>10}{labels[1]:>10}{'diff':>10}  {'95% interval':<20}{'p':>8}"]
    for label, family, path in HEADLINE:
        row = _get(comparison, (family, *path))
        if row is None:
            continue
        low, high = row["interval"]
        lines.append(
            f"{label:<16}{shown(row['a']):>10}{shown(row['b']):>10}{shown(row['difference']):>10}  "
            f"{'[' + shown(low) + ', ' + shown(high) + ']':<20}{shown(row['p_value']):>8}"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# The protocol: the same numbers over the three splits.
# ---------------------------------------------------------------------------------------------


def _across(results, reduce):
    """reduce (3 values -> one) of every number the splits' results share (matrices and strings left out)."""

    def walk(trees):
        first = trees[0]
        out = {}
        for key, value in first.items():
            if key in ("reference", "radius"):
                continue
            if isinstance(value, dict):
                out[key] = walk([tree[key] for tree in trees])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = reduce([float(tree[key]) for tree in trees])
        return out

    keep = ("mPQ", "bPQ", "per_class", "detection", "f1_per_class", "per_tissue", "metrics")
    return walk([{key: result[key] for key in keep if key in result} for result in results])


def protocol_summary(results):
    """{"mean": ..., "std": ...} over the three splits' results; NaN wherever a split has NaN.

    The standard deviation is the population one (np.std, ddof=0), over the three splits.
    """
    summary = {
        "mean": _across(results, lambda values: float(np.mean(values))),
        "std": _across(results, lambda values: float(np.std(values, ddof=PROTOCOL_STD_DDOF))),
    }
    for part in summary.values():
        part["detection"].pop("radius", None)
        for tissue in part["per_tissue"].values():
            tissue.pop("patches", None)
    return summary


def protocol_lines(summary, results):
    """The protocol's table: each headline number of each split, their mean and std."""
    labels = list(results)
    tests = ", ".join(f"{label} on {result['split']}" for label, result in zip(labels, results.values()))
    lines = [
        f"protocol of config folds: {tests}",
        "",
        f"{'':<26}" + "".join(f"{c:>9}" for c in [*labels, "mean", "std"]),
    ]
    values = [*results.values(), summary["mean"], summary["std"]]

    def row(label, get):
        lines.append(f"{label:<26}" + "".join(f"{shown(get(v)):>9}" for v in values))

    row("mPQ", lambda v: v["mPQ"])
    row("bPQ", lambda v: v["bPQ"])
    for key in ("f1", "precision", "recall", "type_accuracy"):
        row(f"detection {key.replace('_', ' ')}", lambda v, k=key: v["detection"][k])
    for label, family, paths in SECOND_BLOCK:
        if family in values[0]["metrics"]:
            for path in paths:
                row(f"{family} {'.'.join(path)}", lambda v, f=family, p=path: _get(v["metrics"][f], p))
    for name in pim.NUCLEUS_CLASSES:
        row(f"PQ {name}", lambda v, n=name: v["per_class"][n])
    for name in pim.NUCLEUS_CLASSES:
        row(f"F1 {name}", lambda v, n=name: v["f1_per_class"][n])
    for tissue in pim.TISSUES:
        for key in ("mPQ", "bPQ"):
            row(f"{key} {tissue}", lambda v, t=tissue, k=key: v["per_tissue"][t][k])
    lines += ["", "std: population standard deviation (ddof=0) over the three splits"]
    return lines
