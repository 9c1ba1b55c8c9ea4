"""Scoring a split: the truth of each patch checked, matched with its prediction, turned into a state row.

One patch at a time, in this process or a pool (convert.pool); the rows go to convert.metrics for every
reduction. No argparse here: plain values in, arrays out.
"""

import numpy as np

import pannuke_imagemask as pim

from . import metrics, panoptic
from .common import progress_bar
from .pool import WORKER, opened, run_tasks

TASK_PATCHES = 32  # patches per task handed to a worker
TRUTH_PIECE = 1 << 15  # truth values cast and checked at a time: 256 KB of float64, within a core's L2 cache


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


def score_patch(true, prediction, families, radius, classified):
    """The state row (convert.metrics) of truth ids (H, W, >=5) and a PatchPrediction."""
    matching = panoptic.match(true, prediction.channels)
    return metrics.patch_state(families, matching, prediction, radius, classified)


def _score_task(task):
    """The state rows of rows start..stop of the split."""
    start, stop = task
    files, rows, prediction, names, radius = (
        WORKER[key] for key in ("files", "rows", "prediction", "families", "radius")
    )
    families = [metrics.FAMILIES[name] for name in names]
    out = []
    for k, (fold, index) in enumerate(rows[start:stop]):
        _, masks = opened(("fold", fold), lambda fold=fold: pim.open_fold(files[fold]))
        truth = truth_ids(masks[index], where=f"{files[fold]['masks']}: patch {index}")
        out.append(score_patch(truth, prediction.read(start + k), families, radius, prediction.classified))
    return np.array(out)


def score_rows(files, rows, prediction, families, radius, num_proc=1, quiet=False):
    """(N, K) state rows of the split's rows [(fold, index), ...] against the prediction."""
    tasks = [(s, min(s + TASK_PATCHES, len(rows))) for s in range(0, len(rows), TASK_PATCHES)]
    names = [family.name for family in families]  # by name: a worker looks them up, nothing to pickle
    state = {"files": files, "rows": rows, "prediction": prediction, "families": names, "radius": radius}
    chunks = []
    with progress_bar(len(rows), "Evaluating", quiet) as bar:
        for chunk in run_tasks(_score_task, tasks, num_proc, state):
            chunks.append(chunk)
            bar.update(len(chunk))
    return np.concatenate(chunks)
