"""Predictions for the tiff, hovernext and conic readers' tests, and their independent routes to a score.

A prediction here is, per patch of fake fold 1, an instance map and a class map made from the builder's labels
(tests/reference.py) with nuclei dropped, shifted and relabelled and ids that are neither contiguous nor in
order. The independent route scores the same nuclei as a masks.npy of class channels, which evaluate reads by
another path (no instance map, no majority vote, F1 nuclei from the collapsed channels).
"""

import csv
import json

import numpy as np
from pannuke_fixtures import raw_fold
from reference import reference_labels

import pannuke_imagemask as pim
from convert.__main__ import main

SIZE = (256, 256)


def fold1_patches():
    """The split `--config folds --split fold1` scores: [(patch id, COCO image id)], in order."""
    from convert.formats.coco import image_id

    return [(pim.patch_id(1, i), image_id(1, i)) for i in range(24)]


def predicted(three_folds, seed=3):
    """Per patch (instance int64 (H, W), classes int64 (H, W) 0..5): one nucleus in five dropped, one in four
    shifted by a few pixels (painted over what is there), one in six given another class; id = 7 * n + 3 for
    the n-th nucleus painted, painted in a shuffled order."""
    _, masks, _ = raw_fold(three_folds, 1, "kaggle")
    rng = np.random.default_rng(seed)
    out = []
    for mask in masks:
        _, instance, nuclei = reference_labels(np.asarray(mask))
        pred_instance = np.zeros(SIZE, dtype=np.int64)
        pred_class = np.zeros(SIZE, dtype=np.int64)
        for n, k in enumerate(rng.permutation(len(nuclei))):
            nucleus = nuclei[k]
            pixels = instance == nucleus["id"]
            roll = rng.integers(0, 20)
            if roll < 4:
                continue
            if roll < 9:
                pixels = np.roll(pixels, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
            kind = nucleus["label"] + 1
            if roll >= 17:
                kind = kind % 5 + 1
            pred_instance[pixels] = 7 * n + 3
            pred_class[pixels] = kind
        out.append((pred_instance, pred_class))
    return out


def renumbered(instance):
    """(the map numbered 1..n in increasing order of its ids, the ids in that order), by a Python sort."""
    ids = sorted(set(instance.ravel().tolist()) - {0})
    numbered = np.zeros(instance.shape, dtype=np.int64)
    for number, value in enumerate(ids, 1):
        numbered[instance == value] = number
    return numbered, ids


def masks_of(preds):
    """The independent route: (N, H, W, 5) class channels, each nucleus in the channel of its class."""
    channels = np.zeros((len(preds), *SIZE, 5), dtype=np.int64)
    for i, (instance, kind) in enumerate(preds):
        for c in range(5):
            channels[i, ..., c] = np.where(kind == c + 1, instance, 0)
    return channels


def score(three_folds, pred, tmp_path, *extra):
    """(the --json result without its pred entry, per-patch rows, pred entry) of evaluate on fold 1."""
    out, per_patch = tmp_path / "result.json", tmp_path / "patches.csv"
    argv = ["evaluate", "--pred", str(pred), "--data-dir", three_folds, "--config", "folds", "--split", "fold1"]
    assert main([*argv, "--json", str(out), "--per-patch", str(per_patch), "--quiet", *extra]) == 0
    with open(per_patch, newline="") as f:
        rows = list(csv.reader(f))
    result = json.loads(out.read_text())
    return {**result, "pred": None}, rows, result["pred"]


AGNOSTIC = ("bPQ", "detection")  # what a class-agnostic layout reports, as a classified one would


def agnostic_part(result, rows):
    """The numbers a class-agnostic prediction shares with a classified one of the same nuclei."""
    detection = {k: v for k, v in result["detection"].items() if k != "type_accuracy"}
    header = rows[0]
    keep = [header.index(name) for name in ("id", "bPQ", "det_tp", "det_fp", "det_fn")]
    return result["bPQ"], detection, [[row[k] for k in keep] for row in rows]
