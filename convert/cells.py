"""Per-nucleus classification of the true nuclei, as PathoCellBench scores PanNuke.

Kainmueller-Lab/Pathology-Foundation-Model-Benchmark src/benchmark/run/eval.py Eval: every true nucleus
gets a true class (the mean of the semantic truth over its pixels, cast to int) and a predicted class
(the argmax of the per-class mean of the predicted softmax over its pixels, background included); no
detection, no matching. The nuclei of the split are pooled and scored with sklearn one class at a
time (compute_metrics_instance_level, src/benchmark/utils/metric_utils.py). A patch's state is its
confusion of nuclei (true class row, predicted class column); a split's is the sum. Plain numpy.

Predictions here are hard labels, so the mean softmax of a class is the share of the nucleus's pixels
predicted that class: the predicted class is the majority vote. PathoCellBench numbers PanNuke's
classes the other way round (Kainmueller-Lab/Bio-Image-Datasets pannuke_dataset.py mapping_dict: 1
epithelial, 2 dead, 3 connective, 4 inflammatory, 5 neoplastic; ours is PanNuke's channel + 1), and
its argmax (pandas idxmax) takes the first of equal means in that numbering: so a tie goes to
background, then epithelial, dead, connective, inflammatory, neoplastic, and the truncated mean is
taken in that numbering too. The scores themselves do not depend on the numbering.
"""

import numpy as np

import pannuke_imagemask as pim

from .numbers import ratio as _ratio

LABELS = pim.NUM_CLASS_CHANNELS + 1  # 0 background, 1..5 the classes (PanNuke channel + 1)
COLUMNS = [f"nuclei_true{t}_pred{p}" for t in range(LABELS) for p in range(LABELS)]
# Our label -> PathoCellBench's label for PanNuke (and back: the map is its own inverse).
THEIRS = np.array([0, 5, 4, 3, 2, 1])

_EVAL = "Kainmueller-Lab/Pathology-Foundation-Model-Benchmark src/benchmark/run/eval.py"
_MACRO = f"{_EVAL} Eval.compute_metrics_instance_level"
REFERENCES = {
    "cells_f1_macro": f"{_MACRO} (f1_score_macro)",
    "cells_precision_macro": f"{_MACRO} (precision_macro)",
    "cells_recall_macro": f"{_MACRO} (recall_macro)",
    "cells_f1_micro": f"{_MACRO} (f1_score_micro)",
    **{f"cells_f1_{name}": f"{_MACRO} (<class>/f1_score)" for name in pim.NUCLEUS_CLASSES},
}


def nucleus_classes(maps):
    """(true, predicted) class of every true nucleus, in our numbering, ordered by instance id."""
    ids = maps.true_instance.ravel()
    # One count of every (nucleus, true label, predicted label): both votes of every nucleus in one pass.
    pairs = maps.true_semantic.ravel() * LABELS + maps.pred_semantic.ravel()
    size = (int(ids.max()) + 1) * LABELS * LABELS
    votes = np.bincount(ids * (LABELS * LABELS) + pairs, minlength=size).reshape(-1, LABELS, LABELS)[1:]
    true_votes, pred_votes = votes.sum(axis=2), votes.sum(axis=1)
    area = true_votes.sum(axis=1)
    present = area > 0  # ids missing from the mask are no nuclei
    # int(mean) of their labels: exact as integer floor division, the sum and the area being whole numbers.
    true_class = THEIRS[(true_votes[present] @ THEIRS) // area[present]]
    # Columns in their numbering, so that argmax's first maximum is theirs.
    pred_class = THEIRS[np.argmax(pred_votes[present][:, THEIRS], axis=1)]
    return true_class, pred_class


def patch_state(maps):
    """One patch's confusion of its true nuclei (true class row, predicted class column), in COLUMNS order."""
    true_class, pred_class = nucleus_classes(maps)
    return np.bincount(true_class * LABELS + pred_class, minlength=LABELS * LABELS).astype(np.float64)


def reduce(sums, classified=True):
    """PathoCellBench's scores of summed states (R, T, len(COLUMNS)); each value (R,).

    Classes scored: those in truth or prediction, background (0) excepted. Per class c, one against
    the rest (sklearn labels=[c], average="micro", zero_division=0): precision TP / P, recall TP / T,
    F1 = 2 TP / (T + P), 0 where undefined. The macro scores are plain means over the classes scored
    (NaN when there is none, as numpy's mean of nothing); F1 micro is sklearn's micro over all labels
    with background, that is the share of nuclei whose class is right (NaN without nuclei, where
    sklearn raises). Per-class F1 is NaN for a class not scored. Without classes (classified False)
    there is no class to compare: every value is NaN.
    """
    matrix = np.asarray(sums, dtype=np.float64).sum(axis=1).reshape(-1, LABELS, LABELS)
    tp = np.diagonal(matrix, axis1=1, axis2=2)
    true = matrix.sum(axis=2)
    pred = matrix.sum(axis=1)
    scored = (true + pred) > 0
    scored[:, 0] = False
    count = scored.sum(axis=1)
    f1 = _ratio(2 * tp, true + pred, 0.0)

    def macro(values):
        return _ratio(np.where(scored, values, 0.0).sum(axis=1), count, np.nan)

    result = {
        "cells_f1_macro": macro(f1),
        "cells_precision_macro": macro(_ratio(tp, pred, 0.0)),
        "cells_recall_macro": macro(_ratio(tp, true, 0.0)),
        "cells_f1_micro": _ratio(tp.sum(axis=1), true.sum(axis=1), np.nan),
    }
    for c, name in enumerate(pim.NUCLEUS_CLASSES, start=1):
        result[f"cells_f1_{name}"] = np.where(scored[:, c], f1[:, c], np.nan)
    if not classified:
        result = {key: np.full_like(value, np.nan) for key, value in result.items()}
    return result
