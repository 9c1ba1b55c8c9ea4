"""Pixel-level scores of the 6-class maps, as THUNDER and PFM-DenseBench compute them on PanNuke.

Both pool every pixel of the split into one confusion matrix (rows truth, columns prediction; 0
background, 1..5 the classes) and score that. So a patch's state is its 6x6 pixel confusion, the
state of a split is the sum, and every score here is a function of the summed matrix only:
pooled over patches, tissues or bootstrap replicates alike. Plain functions of numpy arrays.

THUNDER (MICS-Lab/thunder src/thunder/utils/downstream_metrics.py compute_metrics) calls sklearn's
accuracy_score, balanced_accuracy_score, f1_score(average="macro") and jaccard_score(average="macro")
on all pixels: macro means over the labels found in truth or prediction, background included.
PFM-DenseBench (lingxitong/PFM_Segmentation utils/metrics.py SegmentationMetrics) derives pixel
accuracy, mIoU, mDice, FW-IoU, mean accuracy, precision and F1 from its confusion matrix, each mean
over its own set of classes, and 0 where a mean has no class. Without classes (a class-agnostic
prediction, classified False) both score the 2-class maps: background against any nucleus.
"""

import numpy as np

import pannuke_imagemask as pim

from .numbers import ratio as _ratio

LABELS = pim.NUM_CLASS_CHANNELS + 1  # 0 background, 1..5 the classes (PanNuke channel + 1)
COLUMNS = [f"pixels_true{t}_pred{p}" for t in range(LABELS) for p in range(LABELS)]
CLASS_NAMES = ["background", *pim.NUCLEUS_CLASSES]
BINARY_NAMES = ["background", "nucleus"]

_THUNDER = "MICS-Lab/thunder src/thunder/utils/downstream_metrics.py compute_metrics"
_PFM = "lingxitong/PFM_Segmentation utils/metrics.py SegmentationMetrics"
# (key, sklearn call or PFM method it follows)
_THUNDER_KEYS = {
    "thunder_accuracy": "accuracy_score",
    "thunder_balanced_accuracy": "balanced_accuracy_score",
    "thunder_f1_macro": 'f1_score(average="macro")',
    "thunder_jaccard_macro": 'jaccard_score(average="macro")',
}
_PFM_KEYS = {
    "pfm_pixel_accuracy": "compute_pixel_accuracy",
    "pfm_miou": "compute_iou",
    "pfm_mdice": "compute_dice_score",
    "pfm_fwiou": "compute_frequency_weighted_iou",
    "pfm_mean_accuracy": "compute_mean_accuracy",
    "pfm_mean_precision": "compute_precision_recall",
    "pfm_mean_f1": "compute_f1_score",
}
REFERENCES = {
    **{key: f"{_THUNDER} (sklearn {call})" for key, call in _THUNDER_KEYS.items()},
    **{key: f"{_PFM}.{method}" for key, method in _PFM_KEYS.items()},
    **{
        f"pfm_{score}_{name}": f"{_PFM}.{method}"
        for score, method in (("iou", "compute_iou"), ("dice", "compute_dice_score"))
        for name in dict.fromkeys(CLASS_NAMES + BINARY_NAMES)
    },
}


def patch_state(maps):
    """One patch's 6x6 pixel confusion (truth row, prediction column), flattened in COLUMNS order."""
    true, pred = maps.true_semantic, maps.pred_semantic
    return np.bincount((true * LABELS + pred).ravel(), minlength=LABELS * LABELS).astype(np.float64)


def confusion(sums, classified=True):
    """The pooled confusion matrices (R, K, K) of summed states (R, T, len(COLUMNS)): K 6, or 2 without classes."""
    matrix = np.asarray(sums, dtype=np.float64).sum(axis=1).reshape(-1, LABELS, LABELS)
    if classified:
        return matrix
    # Background against any nucleus: classes 1..5 merge on both sides.
    rows = np.stack([matrix[:, 0], matrix[:, 1:].sum(axis=1)], axis=1)
    return np.stack([rows[:, :, 0], rows[:, :, 1:].sum(axis=2)], axis=2)


def _mean_over(values, kept, empty):
    """Per row, the mean of values where kept; empty for a row that keeps none."""
    return _ratio(np.where(kept, values, 0.0).sum(axis=1), kept.sum(axis=1), empty)


def reduce(sums, classified=True):
    """Every THUNDER and PFM-DenseBench score of summed states (R, T, len(COLUMNS)); each value (R,).

    Per class c of the pooled matrix: TP the diagonal, T the truth row sum, P the prediction column sum,
    IoU = TP / (T + P - TP), Dice = 2 TP / (T + P), both 0 for a class in neither truth nor prediction.
    THUNDER (sklearn): accuracy = sum TP / N; balanced accuracy = mean TP / T over classes with T > 0;
    macro F1 = mean Dice and macro Jaccard = mean IoU over classes in truth or prediction (T + P > 0),
    which is sklearn's default label set. PFM: pixel accuracy = sum TP / N; mIoU and mDice over the same
    classes; FW-IoU = sum of T / N * IoU; mean accuracy = mean TP / T over T > 0 (its Mean_Recall is the
    same number); mean precision = mean TP / P over P > 0; Mean_F1 = mean of 2PR / (P + R) over classes
    with P + R > 0, that is with TP > 0, where 2PR / (P + R) is the Dice: a class never hit drops out,
    so Mean_F1 >= mDice. PFM's per-class F1 equals its Dice and is left out. Scores of an empty matrix
    are NaN for THUNDER (sklearn has no value) and 0 for PFM (its 1e-8 guards); PFM computes in
    float32 with those guards, so its printed values agree with these to about 1e-6, not 1e-9.
    """
    matrix = confusion(sums, classified)
    tp = np.diagonal(matrix, axis1=1, axis2=2)
    true = matrix.sum(axis=2)
    pred = matrix.sum(axis=1)
    total = true.sum(axis=1)
    present = (true + pred) > 0  # in truth or prediction: TP + FP + FN > 0
    iou = _ratio(tp, true + pred - tp, 0.0)
    dice = _ratio(2 * tp, true + pred, 0.0)
    recall = _ratio(tp, true, 0.0)
    correct = tp.sum(axis=1)
    result = {
        "thunder_accuracy": _ratio(correct, total, np.nan),
        "thunder_balanced_accuracy": _mean_over(recall, true > 0, np.nan),
        "thunder_f1_macro": _mean_over(dice, present, np.nan),
        "thunder_jaccard_macro": _mean_over(iou, present, np.nan),
        "pfm_pixel_accuracy": _ratio(correct, total, 0.0),
        "pfm_miou": _mean_over(iou, present, 0.0),
        "pfm_mdice": _mean_over(dice, present, 0.0),
        "pfm_fwiou": _ratio((true * iou).sum(axis=1), total, 0.0),
        "pfm_mean_accuracy": _mean_over(recall, true > 0, 0.0),
        "pfm_mean_precision": _mean_over(_ratio(tp, pred, 0.0), pred > 0, 0.0),
        "pfm_mean_f1": _mean_over(dice, tp > 0, 0.0),
    }
    names = CLASS_NAMES if classified else BINARY_NAMES
    for c, name in enumerate(names):
        result[f"pfm_iou_{name}"] = iou[:, c]
        result[f"pfm_dice_{name}"] = dice[:, c]
    return result
