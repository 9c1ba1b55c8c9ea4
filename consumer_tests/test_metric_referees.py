"""evaluate's numbers against the referees on PyPI themselves: MONAI, torchmetrics 0.11.4 and StarDist.

One perturbed prediction of fake fold 1 (24 patches: one with nothing on either side, one whose truth is empty
and whose prediction is not, one empty prediction, one perfect one) is scored by `evaluate --metrics all --json
--per-patch`. Per patch, the values the command has no CSV column for come from the pure modules it runs
(convert.scoring.truth_ids + convert.panoptic.match, then each family's state), and the CSV's bPQ ties them to
the command. The maps handed to each referee are built independently: the truth by tests/reference.py
`reference_labels` (the builder's masks), the prediction by the same rule (channels painted in order, each
(channel, id) one nucleus).

Referees and the tolerance their own arithmetic allows (u = 2**-24, float32's unit roundoff):
- MONAI 1.6.1 `monai/metrics/panoptic_quality.py`: `compute_panoptic_quality` per patch against the binary
  numbers, `PanopticQualityMetric(num_classes=5, reduction="sum_batch")` pooled against CoNIC's mPQ+. Its
  pairing (IoU strictly above 0.5) and its TP/FP/FN are ours exactly. Its IoUs, their sum and every quotient
  are float32: a sum of n IoUs and one division are within (n + 2)·u relative. Its PQ is
  ΣIoU / (TP + FP/2 + FN/2 + 1e-6), where PanNuke's is TP/(TP + FP/2 + FN/2) · ΣIoU/(TP + 1e-6) and CoNIC's
  TP/(TP + FP/2 + FN/2 + 1e-6) · ΣIoU/(TP + 1e-6): the two differ by less than 1e-6/TP relative (the
  ratio is TP(D + 1e-6) / (D(TP + 1e-6)), D = TP + FP/2 + FN/2 >= TP); its SQ and RQ have the 1e-6 where
  CoNIC's and CellViT's SQ and DQ have it, but in float32 (TP + 1e-6 is TP once TP > 8).
- torchmetrics 0.11.4 (CellViT's pin): `functional.dice(preds, target, ignore_index=0)` and
  `functional.classification.binary_jaccard_index(preds, target)` on the binary maps, as CellViT's
  `inference_cellvit_experiment_pannuke.py` calls them per image: integer counts, one float32 division, so
  within u relative; both empty gives Dice 0.0 and Jaccard NaN, as the command's cellvit family has them.
  0.11.4 imports `pkg_resources`, which setuptools 82 removed: the `consumers` extra pins setuptools 81.0.0.
- StarDist 0.9.2 `stardist/matching.py matching(y_true, y_pred, thresh=0.5)`: float32 IoUs (`_safe_divide`),
  pairs at IoU >= 0.5. The fake fold has pairs of IoU exactly 0.5 (a predicted nucleus merging two equal true
  ones, a true one split in halves): StarDist's tp is ours plus a maximum matching of those pairs, no more
  (the toy case below shows one). Its panoptic_quality = ΣIoU/(TP + FP/2 + FN/2), with no epsilon: without its
  0.5 pairs and times TP/(TP + 1e-6) it is PanNuke's bPQ, within 2(tp + 2)·u relative.
Where the truth has no nucleus, PanNuke's bPQ is NaN (run.py skips the patch); MONAI and StarDist give 0.
"""

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import PanopticQualityMetric, compute_panoptic_quality
from pannuke_fixtures import raw_fold
from perturb import perturb
from reference import reference_labels
from scipy.optimize import linear_sum_assignment
from stardist.matching import matching

with warnings.catch_warnings():
    # torchmetrics 0.11.4 reads its dependencies' versions with pkg_resources, which warns it is deprecated.
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    import torchmetrics
    from torchmetrics.functional import dice
    from torchmetrics.functional.classification import binary_jaccard_index

import pannuke_imagemask as pim
from convert import panoptic
from convert.__main__ import main
from convert.scoring import truth_ids

U32 = 2.0**-24  # float32's unit roundoff: MONAI's and torchmetrics' results are float32
EPSILON = 1.0e-6  # every PQ reference's smoothing term, placed differently by each
VOID, EMPTY_TRUTH, PERFECT, EMPTY_PRED = 1, 2, 5, 6  # patches of the prediction below (1, 2: no true nucleus)


def test_the_pinned_referees_are_the_ones_imported():
    import monai
    import stardist

    assert (monai.__version__, torchmetrics.__version__, stardist.__version__) == ("1.6.1", "0.11.4", "0.9.2")


def painted(channels):
    """(semantic, instance) of (H, W, 5) predicted ids: channels painted in order (reference_labels' rule)."""
    semantic, instance, _ = reference_labels(np.concatenate([channels, np.zeros_like(channels[..., :1])], axis=-1))
    return semantic.astype(np.int64), instance.astype(np.int64)


def state_value(row, columns, name):
    """A family's stored value, NaN where its `_counted` column says the reference leaves it out."""
    counted = f"{name}_counted"
    if counted in columns and row[columns.index(counted)] == 0:
        return math.nan
    return float(row[columns.index(name)])


@pytest.fixture(scope="module")
def scored(three_folds, tmp_path_factory):
    """Fold 1, a perturbed prediction, the command's --json and --per-patch, and each patch's maps and states."""
    _, masks, tissues = raw_fold(three_folds, 1, "kaggle")
    masks = np.asarray(masks)
    rng = np.random.default_rng(21)
    pred = np.stack([perturb(masks[i, ..., :5], rng) for i in range(len(masks))])
    pred[VOID] = 0
    pred[EMPTY_TRUTH] = 0
    pred[EMPTY_TRUTH, 100:110, 100:112, 0] = 7  # a spurious nucleus where the truth has none
    pred[PERFECT] = masks[PERFECT, ..., :5]
    pred[EMPTY_PRED] = 0
    folder = tmp_path_factory.mktemp("referees")
    np.save(folder / "pred.npy", pred.astype(np.float64))
    argv = ["evaluate", "--pred", str(folder / "pred.npy"), "--data-dir", three_folds, "--config", "folds"]
    argv += ["--split", "fold1", "--metrics", "all", "--json", str(folder / "r.json")]
    assert main([*argv, "--per-patch", str(folder / "r.csv"), "--quiet"]) == 0
    result = json.loads((folder / "r.json").read_text())
    with open(folder / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    patches = []
    for i, row in enumerate(rows):
        assert (int(row["fold"]), int(row["index"])) == (1, i)
        true_semantic, true_instance, _ = reference_labels(masks[i])
        pred_semantic, pred_instance = painted(pred[i])
        match = panoptic.match(truth_ids(masks[i], f"fold 1 patch {i}"), pred[i])
        pannuke_row = panoptic.pannuke_state(match)
        command_bpq = float(row["bPQ"]) if row["bPQ"] else math.nan
        # The pure modules' per-patch values are the command's: the CSV's bPQ is PanNuke's state's.
        bpq = state_value(pannuke_row, panoptic.PANNUKE_COLUMNS, "bPQ")
        assert command_bpq == bpq or (math.isnan(command_bpq) and math.isnan(bpq)), i
        patches.append(
            {
                "true_semantic": true_semantic.astype(np.int64),
                "true_instance": true_instance.astype(np.int64),
                "pred_semantic": pred_semantic,
                "pred_instance": pred_instance,
                "match": match,
                "bPQ": command_bpq,
                "pannuke": pannuke_row,
                "cellvit": panoptic.cellvit_state(match),
                "binary": panoptic.binary_counts(match),  # n_true, n_pred, TP, ΣIoU
                "merged": panoptic.merged_counts(match),  # (5, 4) the same per class, on the merged maps
            }
        )
    return {"result": result, "patches": patches, "tissues": tissues}


def test_the_fold_has_each_case_the_referees_treat_apart(scored):
    counts = [p["binary"] for p in scored["patches"]]
    assert [i for i, c in enumerate(counts) if c[0] == 0] == [VOID, EMPTY_TRUTH]
    assert counts[VOID][1] == 0 and counts[EMPTY_TRUTH][1] == 1
    assert counts[EMPTY_PRED][0] > 0 and counts[EMPTY_PRED][1] == 0
    assert counts[PERFECT][2] == counts[PERFECT][0] == counts[PERFECT][1]
    imperfect = [c for c in counts if c[0] > 0 and c[2] < c[0]]
    assert len(imperfect) >= 18 and sum(c[2] for c in counts) > 200  # a real test of pairing and IoU sums
    # IoU exactly 0.5 (a prediction merging two equal nuclei, a nucleus split in halves): StarDist's >= pairs
    # there what every PQ reference leaves unpaired.
    assert sum((p["match"].binary_pairs.iou == 0.5).any() for p in scored["patches"]) >= 3


def tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int32))


def monai_binary(patch, **options):
    """MONAI's compute_panoptic_quality of the patch's binary maps (pred first, as MONAI takes them)."""
    out = compute_panoptic_quality(
        tensor(patch["pred_instance"]), tensor(patch["true_instance"]), remap=True, match_iou_threshold=0.5, **options
    )
    return out.tolist() if options.get("output_confusion_matrix") else float(out)


def test_monai_per_patch_pq_sq_rq_equal_the_commands_binary_numbers(scored):
    for i, patch in enumerate(scored["patches"]):
        n_true, n_pred, tp, iou_sum = patch["binary"]
        monai_tp, monai_fp, monai_fn, monai_iou = monai_binary(patch, output_confusion_matrix=True)
        assert (monai_tp, monai_fp, monai_fn) == (tp, n_pred - tp, n_true - tp), i
        np.testing.assert_allclose(monai_iou, iou_sum, rtol=(tp + 1) * U32, atol=0, err_msg=str(i))
        pq, sq, rq = (monai_binary(patch, metric_name=name) for name in ("pq", "sq", "rq"))
        if n_true == 0:
            # PanNuke's run.py: no number for this patch (NaN, skipped by the means); MONAI: 0 / (FP/2 + 1e-6).
            assert (pq, sq, rq) == (0.0, 0.0, 0.0) and math.isnan(patch["bPQ"]), i
            continue
        if tp == 0:
            assert (pq, sq, rq) == (0.0, 0.0, 0.0) and patch["bPQ"] == 0.0, i
            continue
        float32 = (tp + 2) * U32
        # SQ = ΣIoU / (TP + 1e-6) in both (MONAI's 1e-6 vanishes in float32 once TP > 8).
        bsq = state_value(patch["pannuke"], panoptic.PANNUKE_COLUMNS, "bSQ")
        np.testing.assert_allclose(sq, bsq, rtol=float32 + EPSILON / tp, atol=0, err_msg=str(i))
        # RQ = TP / (TP + FP/2 + FN/2 + 1e-6): CellViT's DQ exactly, one float32 rounding of it.
        bdq = state_value(patch["cellvit"], panoptic.CELLVIT_COLUMNS, "bDQ")
        np.testing.assert_allclose(rq, bdq, rtol=2 * U32, atol=0, err_msg=str(i))
        # PQ: MONAI's ΣIoU/(D + 1e-6) against the CSV's DQ·SQ: within 1e-6/TP relative, never above MONAI's.
        np.testing.assert_allclose(pq, patch["bPQ"], rtol=float32 + EPSILON / tp, atol=0, err_msg=str(i))
        assert patch["bPQ"] <= pq * (1 + float32), i
    perfect = scored["patches"][PERFECT]["binary"]
    assert monai_binary(scored["patches"][PERFECT], metric_name="rq") == pytest.approx(1.0, abs=1e-6)
    assert perfect[3] == perfect[2]  # every IoU 1: the perfect patch's PQ is n / (n + 1e-6) in both


def test_monai_pooled_per_class_counts_and_pq_equal_conic_mpq_plus(scored):
    patches = scored["patches"]
    y = torch.stack([torch.stack([tensor(p["true_instance"]), tensor(p["true_semantic"])]) for p in patches])
    y_pred = torch.stack([torch.stack([tensor(p["pred_instance"]), tensor(p["pred_semantic"])]) for p in patches])
    metric = PanopticQualityMetric(num_classes=5, metric_name=("pq", "sq", "rq"), reduction="sum_batch")
    metric(y_pred=y_pred, y=y)
    # Per patch and class, MONAI's TP, FP, FN (instances masked by their class, remapped) are ours on the merged maps.
    buffer = metric.get_buffer().double().numpy()  # (patches, 5, 4): tp, fp, fn, ΣIoU
    for i, patch in enumerate(patches):
        n_true, n_pred, tp, iou_sum = patch["merged"].T
        np.testing.assert_array_equal(buffer[i, :, :3], np.stack([tp, n_pred - tp, n_true - tp], axis=1), str(i))
        np.testing.assert_allclose(buffer[i, :, 3], iou_sum, rtol=(tp.max() + 1) * U32, atol=0, err_msg=str(i))
    pq, sq, rq = (values.double().numpy() for values in metric.aggregate())
    conic = scored["result"]["metrics"]["conic"]
    pooled = sum(p["merged"] for p in patches)
    tolerances = []
    for c, name in enumerate(pim.NUCLEUS_CLASSES):
        tp = pooled[c, 2]
        assert tp > 0, name
        # float32: the patch sums of ΣIoU (tp roundings), the sum over patches, one division.
        float32 = (tp + len(patches) + 2) * U32
        numbers = conic["per_class"][name]
        np.testing.assert_allclose(rq[c], numbers["DQ+"], rtol=4 * U32 + EPSILON / tp, atol=0, err_msg=name)
        np.testing.assert_allclose(sq[c], numbers["SQ+"], rtol=float32 + EPSILON / tp, atol=0, err_msg=name)
        np.testing.assert_allclose(pq[c], numbers["PQ+"], rtol=float32 + EPSILON / tp, atol=0, err_msg=name)
        tolerances.append(float32 + EPSILON / tp)
    # mPQ+: the mean of the 5 classes' PQ (MONAI leaves the averaging to the caller).
    np.testing.assert_allclose(np.mean(pq), conic["mPQ+"], rtol=max(tolerances), atol=0)
    assert 0.2 < conic["mPQ+"] < 0.95


def test_torchmetrics_0_11_4_dice_and_jaccard_per_image_equal_cellvits(scored):
    dices, jaccards = [], []
    for i, patch in enumerate(scored["patches"]):
        pred = torch.from_numpy((patch["pred_instance"] > 0).astype(np.int64))
        target = torch.from_numpy((patch["true_semantic"] > 0).astype(np.int64))
        value = float(dice(preds=pred, target=target, ignore_index=0))
        jaccard = float(binary_jaccard_index(preds=pred, target=target))
        ours = patch["cellvit"]
        columns = panoptic.CELLVIT_COLUMNS
        for theirs, name in ((value, "dice"), (jaccard, "jaccard")):
            mine = state_value(ours, columns, name)
            if math.isnan(theirs):
                assert math.isnan(mine), (i, name)
            else:
                np.testing.assert_allclose(mine, theirs, rtol=U32, atol=0, err_msg=f"{i} {name}")
        dices.append(value)
        jaccards.append(jaccard)
    # torchmetrics 0.11.4 on the patch with nothing on either side: Dice 0.0 (counted), Jaccard NaN (skipped).
    assert dices[VOID] == 0.0 and math.isnan(jaccards[VOID])
    assert [i for i, j in enumerate(jaccards) if math.isnan(j)] == [VOID]
    assert dices[EMPTY_TRUTH] == jaccards[EMPTY_TRUTH] == dices[EMPTY_PRED] == jaccards[EMPTY_PRED] == 0.0
    assert dices[PERFECT] == jaccards[PERFECT] == 1.0
    # CellViT's dataset values: np.nanmean over images of the float32 values; per tissue over its images.
    cellvit = scored["result"]["metrics"]["cellvit"]
    np.testing.assert_allclose(cellvit["binary_dice"], np.nanmean(dices), rtol=U32, atol=0)
    np.testing.assert_allclose(cellvit["binary_jaccard"], np.nanmean(jaccards), rtol=U32, atol=0)
    for tissue in set(scored["tissues"]):
        rows = [i for i, t in enumerate(scored["tissues"]) if t == tissue]
        for key, values in (("dice", dices), ("jaccard", jaccards)):
            expected = np.array([values[i] for i in rows])
            got = cellvit["per_tissue"][tissue][key]
            if np.isnan(expected).all():
                assert got is None, (tissue, key)
            else:
                np.testing.assert_allclose(got, np.nanmean(expected), rtol=U32, atol=0, err_msg=f"{tissue} {key}")


def half_pairs(match):
    """How many more pairs a >= 0.5 rule finds: a maximum matching of the (true, predicted) pairs of IoU exactly 0.5.

    A nucleus in such a pair is in no pair above 0.5 (its two overlaps would exceed its area), so StarDist, which
    maximises the number of pairs at >= 0.5, pairs exactly these beyond the pairs above 0.5."""
    pairs = match.binary_pairs
    half = pairs.iou == 0.5
    true_ids, true_index = np.unique(pairs.true[half], return_inverse=True)
    pred_ids, pred_index = np.unique(pairs.pred[half], return_inverse=True)
    graph = np.zeros((len(true_ids), len(pred_ids)))
    graph[true_index, pred_index] = 1
    rows, cols = linear_sum_assignment(-graph)
    return int(graph[rows, cols].sum())


def test_stardist_matching_per_patch_equals_the_commands_counts_and_pq(scored):
    extra = []
    for i, patch in enumerate(scored["patches"]):
        n_true, n_pred, tp, _ = patch["binary"]
        found = matching(patch["true_instance"], patch["pred_instance"], thresh=0.5, report_matches=True)
        # StarDist's pairs at IoU exactly 0.5, from its own report: the only pairs it has beyond ours.
        half = sum(found.matched_scores[k] == 0.5 for k in found.matched_tps)
        assert half == half_pairs(patch["match"]), i
        assert (found.n_true, found.n_pred) == (n_true, n_pred), i
        assert (found.tp, found.fp, found.fn) == (tp + half, n_pred - tp - half, n_true - tp - half), i
        extra.append(half)
        if n_true == 0:
            assert found.panoptic_quality == 0.0 and math.isnan(patch["bPQ"]), i
            continue
        if tp == 0:
            assert patch["bPQ"] == 0.0, i
            continue
        # StarDist: float32 IoUs, PQ = ΣIoU / (TP + FP/2 + FN/2) and SQ = ΣIoU / TP with no epsilon. Its 0.5 pairs
        # add 0.5 each to ΣIoU and leave TP + FP/2 + FN/2 = (n_true + n_pred) / 2 as it is; PanNuke's bPQ is
        # TP / D · ΣIoU / (TP + 1e-6). Taking the 0.5s away at most doubles StarDist's float32 error.
        float32 = 2 * (found.tp + 2) * U32
        denominator = (n_true + n_pred) / 2
        ious = found.panoptic_quality * denominator - half / 2
        np.testing.assert_allclose(tp / denominator * ious / (tp + EPSILON), patch["bPQ"], rtol=float32, atol=0)
        ious = found.mean_matched_score * found.tp - half / 2
        bsq = state_value(patch["pannuke"], panoptic.PANNUKE_COLUMNS, "bSQ")
        np.testing.assert_allclose(ious / (tp + EPSILON), bsq, rtol=float32, atol=0, err_msg=str(i))
    assert sum(extra) >= 3  # the fake fold's merged and split nuclei: IoU exactly 0.5 happens


def test_iou_exactly_half_pairs_in_stardist_only():
    """A true nucleus of 4 pixels and a prediction of 2 of them: IoU 2/4 = 0.5 exactly.

    PanNuke's get_fast_pq (and the command) and MONAI pair only above 0.5 (MONAI zeroes IoUs <= the threshold);
    StarDist's matching pairs at >= 0.5."""
    true = np.zeros((8, 8), dtype=np.int32)
    pred = np.zeros_like(true)
    true[2, 2:6] = 1
    pred[2, 2:4] = 1
    ours = panoptic.binary_counts(panoptic.match(true[..., None], pred[..., None], 1))
    assert ours.tolist() == [1.0, 1.0, 0.0, 0.0]  # one true, one predicted, no pair
    assert panoptic.panoptic_quality(true, pred) == 0.0
    found = matching(true, pred, thresh=0.5)
    assert (found.tp, found.fp, found.fn, found.panoptic_quality) == (1, 0, 0, 0.5)
    tp, fp, fn, _ = compute_panoptic_quality(tensor(pred), tensor(true), output_confusion_matrix=True).tolist()
    assert (tp, fp, fn) == (0, 1, 1)
