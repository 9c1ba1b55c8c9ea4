"""What the report tests share (tests/test_report.py, browser_tests/): a flawed prediction, the command's
run, the page's numbers read back and the gallery expected from the per-patch CSV. Not from convert.report."""

import csv
import json
import math
from html.parser import HTMLParser

import f1_oracle
import numpy as np
from pannuke_fixtures import raw_fold
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from convert.__main__ import main
from convert.results import SECOND_BLOCK

CLASSES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
TYPES = ["none", *CLASSES]


def flawed(masks, seed=3):
    """(N, H, W, 5) predictions of raw masks: nuclei dropped, moved 6 px, retyped, and a spurious disc each."""
    rng = np.random.default_rng(seed)
    truth = np.asarray(masks)[..., :5].astype(np.int64)
    pred = np.zeros_like(truth)
    yy, xx = np.ogrid[: truth.shape[1], : truth.shape[2]]
    for patch in range(len(truth)):
        for channel in range(5):
            for nucleus in np.unique(truth[patch, ..., channel])[1:]:
                mask = truth[patch, ..., channel] == nucleus
                fate = rng.random()
                if fate < 0.12:
                    continue
                if fate < 0.24:
                    mask = np.roll(mask, 6, axis=1)
                target = int(rng.integers(5)) if rng.random() < 0.2 else channel
                pred[patch, ..., target][mask] = nucleus + 5000 * (target + 1)
        cy, cx = rng.integers(20, 236, size=2)
        pred[patch, ..., int(rng.integers(5))][(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = 60000
    return pred


def confusion_oracle(masks, preds, radius=12):
    """HoVer-Net's pairing per patch (f1_oracle), counted by (true type, predicted type); unpaired by type:
    {"labels", "paired" 6 x 6, "missed", "spurious"}, as --json's metrics.hovernet.confusion should hold them."""
    paired = np.zeros((6, 6), dtype=np.int64)
    missed, spurious = np.zeros(6, dtype=np.int64), np.zeros(6, dtype=np.int64)
    for mask, pred in zip(masks, preds):
        true_xy, true_types = f1_oracle.truth_nuclei(mask)
        pred_xy, pred_types = f1_oracle.binary_nuclei(pred)
        if len(true_xy) == 0:
            true_xy, true_types = np.zeros((1, 2)), np.zeros(1, dtype=np.int64)
        if len(pred_xy) == 0:
            pred_xy, pred_types = np.zeros((1, 2)), np.zeros(1, dtype=np.int64)
        distance = cdist(true_xy.astype(np.float32), pred_xy.astype(np.float32))
        rows, cols = linear_sum_assignment(distance)
        kept = distance[rows, cols] <= radius
        for i, j in zip(rows[kept], cols[kept]):
            paired[true_types[i], pred_types[j]] += 1
        np.add.at(missed, np.delete(true_types, rows[kept]), 1)
        np.add.at(spurious, np.delete(pred_types, cols[kept]), 1)
    return {
        "labels": TYPES,
        "paired": paired.tolist(),
        "missed": dict(zip(CLASSES, missed[1:].tolist())),
        "spurious": dict(zip(CLASSES, spurious[1:].tolist())),
    }


class PageReader(HTMLParser):
    """Every element's data attributes, images and gallery lists of a report page."""

    def __init__(self):
        super().__init__()
        self.values = {}  # (run, key) -> data-value text
        self.images = []
        self.lists = {}  # list name -> [patch id, ...]
        self.tags = []
        self._list = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if "data-list" in attrs:
            self._list = attrs["data-list"]
            self.lists[self._list] = []
        if "data-id" in attrs and self._list is not None:
            self.lists[self._list].append(attrs["data-id"])
        if "data-key" in attrs and "data-value" in attrs:
            key = (attrs.get("data-run", ""), attrs["data-key"])
            assert key not in self.values, key
            self.values[key] = attrs["data-value"]


def read_page(path):
    reader = PageReader()
    with open(path, encoding="utf-8") as f:
        reader.feed(f.read())
    return reader


def page_value(text):
    return None if text == "null" else float(text)


def expected_numbers(result, run="", first_run=""):
    """{(run, key): value} of every number the page must show of a --json result."""
    out = {(run, "mPQ"): result["mPQ"], (run, "bPQ"): result["bPQ"]}
    if run in ("", first_run):  # the big numbers at the top are the first run's
        out.update({(run, "card.mPQ"): result["mPQ"], (run, "card.bPQ"): result["bPQ"]})
        out[(run, "card.detection.f1")] = result["detection"]["f1"]
    for key in ("f1", "precision", "recall", "type_accuracy"):
        out[(run, f"detection.{key}")] = result["detection"][key]
    for name in CLASSES:
        out[(run, f"per_class.{name}")] = result["per_class"][name]
        out[(run, f"f1_per_class.{name}")] = result["f1_per_class"][name]
    for tissue, t in result["per_tissue"].items():
        if t["patches"]:
            out[(run, f"per_tissue.{tissue}.mPQ")] = t["mPQ"]
            out[(run, f"per_tissue.{tissue}.bPQ")] = t["bPQ"]
    confusion = result["metrics"]["hovernet"]["confusion"]
    for _, family, paths in SECOND_BLOCK:  # --metrics' block under the headline, where computed
        for path in paths if family in result["metrics"] else ():
            out[(run, ".".join(("metrics", family, *path)))] = result["metrics"][family][path[0]]
    for name in CLASSES:
        for q in ("DQ", "SQ"):
            out[(run, f"metrics.pannuke.per_class.{name}.{q}")] = result["metrics"]["pannuke"]["per_class"][name][q]
    if result["pred"]["classified"]:
        for i, true in enumerate(TYPES):
            for j, pred in enumerate(TYPES):
                out[(run, f"confusion.{true}.{pred}")] = confusion["paired"][i][j]
        for kind in ("missed", "spurious"):
            for name in CLASSES:
                out[(run, f"confusion.{kind}.{name}")] = confusion[kind][name]
    return out


def read_json(path):
    with open(path) as f:
        return json.load(f)


def expected_gallery(csv_path, count, split=None):
    """{list: [patch id, ...]} from --per-patch: the count lowest bPQ and per class PQ, empty cells left out,
    ties in row order."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r["split"] == split]
    lists = {}
    for name, column in [("bPQ", "bPQ"), *[(c, f"pq_{c}") for c in CLASSES]]:
        scored = [(float(r[column]), k, r["id"]) for k, r in enumerate(rows) if r[column] != ""]
        lists[name] = [patch for _, _, patch in sorted(scored)[:count]]
    return lists


def same(page_text, value):
    """A page's data-value against a --json value: exact, null for null."""
    got = page_value(page_text)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return got is None
    return got == value


def write_flawed(three_folds, folder):
    """A flawed prediction of fake fold 1, saved as folder/pred.npy: {"masks", "preds", "path"}."""
    _, masks, _ = raw_fold(three_folds, 1, "kaggle")
    preds = flawed(masks)
    np.save(folder / "pred.npy", preds)
    return {"masks": np.asarray(masks), "preds": preds, "path": str(folder / "pred.npy")}


def report_argv(three_folds, pred, out, patches, *extra):
    argv = ["evaluate", "--pred", pred, "--data-dir", three_folds, "--config", "folds", "--split", "fold1"]
    return [*argv, "--report", str(out), "--report-patches", str(patches), "--quiet", *extra]


def run_report(three_folds, prediction, folder, patches, *extra):
    """evaluate --report, --json and --per-patch of a flawed prediction: {"dir", "json", "csv"}."""
    json_path, csv_path = folder / "result.json", folder / "patches.csv"
    argv = report_argv(three_folds, prediction["path"], folder / "report", patches, "--json", str(json_path), *extra)
    assert main([*argv, "--per-patch", str(csv_path)]) == 0
    return {"dir": folder / "report", "json": read_json(json_path), "csv": csv_path}
