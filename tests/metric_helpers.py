"""Shorthands over the metric modules that only the tests use: one patch's [PQ of each class, mPQ, bPQ], its
F1 counts, and the official reduction of such rows (the command goes through convert.metrics instead)."""

import numpy as np

import pannuke_imagemask as pim
from convert import metrics, panoptic, results
from convert.predictions import PatchPrediction

HEADLINE = [metrics.FAMILIES["pannuke"], metrics.FAMILIES["hovernet"]]


def patch_scores(true, pred):
    """[PQ of each class 0..4, patch mPQ, patch bPQ] of one patch's (H, W, >=5) truth and prediction ids."""
    return score_patch(true, PatchPrediction(np.asarray(pred), None, None))[0]


def score_patch(true, prediction, radius=12, classified=True):
    """(patch scores as patch_scores, F1 counts in detection.COUNT_COLUMNS order) through the command's state row."""
    matching = panoptic.match(true, prediction.channels)
    row = metrics.patch_state(HEADLINE, matching, prediction, radius, classified)[None]
    scores, _ = results.patch_table(HEADLINE, row)
    counts = row[0, metrics.layout(HEADLINE)["hovernet"]][: len(metrics.detection.COUNT_COLUMNS)]
    return scores[0], counts.astype(np.int64)


def binary_points(true):
    """The F1 nuclei of truth ids: (x, y) and type of each nucleus of their binary map."""
    matching = panoptic.match(true, true)
    return metrics.binary_points(matching.true, true.shape[1])


def summarize(scores, tissues):
    """The official reduction (pannuke's) of (N, 7) patch scores: {"mPQ", "bPQ", "per_class", "per_tissue"}."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 7)
    columns = panoptic.PANNUKE_COLUMNS
    state = np.zeros((len(scores), len(columns)))
    names = [f"{name}_PQ" for name in pim.NUCLEUS_CLASSES] + ["mPQ", "bPQ"]
    for k, name in enumerate(names):
        counted = ~np.isnan(scores[:, k])
        state[:, columns.index(name)] = np.where(counted, scores[:, k], 0)
        state[:, columns.index(f"{name}_counted")] = counted
    sums = metrics.tissue_sums(state, metrics.tissue_index(tissues))
    out = results.to_floats(panoptic.pannuke_reduce(sums))
    return {
        "mPQ": out["mPQ"],
        "bPQ": out["bPQ"],
        "per_class": {name: out["per_class"][name]["PQ"] for name in pim.NUCLEUS_CLASSES},
        "per_tissue": {
            tissue: {
                "patches": list(tissues).count(tissue),
                **{k: out["per_tissue"][tissue][k] for k in ("mPQ", "bPQ")},
            }
            for t, tissue in enumerate(pim.TISSUES)
        },
    }
