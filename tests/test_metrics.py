"""The numbers of --metrics, --bootstrap and --compare, each against an oracle written from its reference's
definition (tests/metrics_oracle.py, tests/pq_oracle.py, tests/f1_oracle.py) or the reference itself (sklearn)."""

import json
import math

import f1_oracle
import metrics_oracle as oracle
import numpy as np
import pq_oracle
import pytest
from pannuke_fixtures import raw_fold
from perturb import perturb
from reference import reference_labels

import pannuke_imagemask as pim
from convert import instance, metrics, panoptic
from convert.__main__ import main


def close(actual, expected, tol=1e-9):
    actual = np.nan if actual is None else actual
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), atol=tol, rtol=0)


@pytest.fixture(scope="module")
def fold1(three_folds, tmp_path_factory):
    """Fold 1 (24 patches: a void and an empty one), two perturbed predictions, and each patch's maps."""
    _, masks, tissues = raw_fold(three_folds, 1, "kaggle")
    masks = np.asarray(masks)
    folder = tmp_path_factory.mktemp("metrics")
    preds = {}
    for name, seed in (("a", 21), ("b", 22)):
        rng = np.random.default_rng(seed)
        pred = np.stack([perturb(masks[i, ..., :5], rng) for i in range(len(masks))])
        pred[6] = 0  # an empty prediction
        pred[1] = 0  # the void patch: nothing on either side
        if name == "a":
            pred[5] = masks[5, ..., :5]  # a perfect one
        np.save(folder / f"{name}.npy", pred.astype(np.float64))
        preds[name] = pred
    truth = [reference_labels(masks[i]) for i in range(len(masks))]
    return {"masks": masks, "tissues": tissues, "preds": preds, "folder": folder, "truth": truth}


def pred_maps(channels):
    """The prediction's binary map (channels painted in order) and the class of each of its pixels."""
    classes = np.zeros(channels.shape[:2], dtype=np.int64)
    for c in range(5):
        classes[channels[..., c] != 0] = c + 1
    return pq_oracle.binarize(channels), classes


def run(three_folds, pred, tmp_path, *extra):
    out = tmp_path / "r.json"
    argv = ["evaluate", "--pred", str(pred), "--data-dir", three_folds, "--config", "folds", "--split", "fold1"]
    assert main([*argv, "--json", str(out), "--quiet", *extra]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def all_a(fold1, three_folds, tmp_path_factory):
    return run(three_folds, fold1["folder"] / "a.npy", tmp_path_factory.mktemp("all"), "--metrics", "all")


def test_dq_and_sq_beside_pq_aggregate_as_the_official_script(fold1, all_a):
    numbers = all_a["metrics"]["pannuke"]
    assert numbers["reference"].startswith("PanNuke-metrics run.py")
    per_patch = []
    for i, mask in enumerate(fold1["masks"]):
        pred = fold1["preds"]["a"][i]
        classes = [
            pq_oracle_quality(pq_oracle.renumber(mask[..., j]), pq_oracle.renumber(pred[..., j])) for j in range(5)
        ]
        binary = pq_oracle_quality(pq_oracle.binarize(mask), pq_oracle.binarize(pred))
        per_patch.append((classes, binary))
    for q, k in (("DQ", 0), ("SQ", 1), ("PQ", 2)):
        by_tissue_m, by_tissue_b = {}, {}
        for (classes, binary), tissue in zip(per_patch, fold1["tissues"]):
            by_tissue_m.setdefault(tissue, []).append(pq_oracle.nan_mean([c[k] for c in classes]))
            by_tissue_b.setdefault(tissue, []).append(binary[k])
        close(numbers[f"m{q}"], pq_oracle.nan_mean([pq_oracle.nan_mean(v) for v in by_tissue_m.values()]))
        close(numbers[f"b{q}"], pq_oracle.nan_mean([pq_oracle.nan_mean(v) for v in by_tissue_b.values()]))
        for j, name in enumerate(pim.NUCLEUS_CLASSES):
            close(numbers["per_class"][name][q], pq_oracle.nan_mean([c[j][k] for c, _ in per_patch]))
    assert numbers["mPQ"] == all_a["mPQ"] and numbers["bPQ"] == all_a["bPQ"]  # today's keys, the same numbers
    assert 0.2 < numbers["mDQ"] < 0.95 and 0.5 < numbers["bSQ"] < 1  # neither trivial nor perfect


def pq_oracle_quality(true, pred):
    """[DQ, SQ, PQ] as PanNuke's get_fast_pq, NaN when the truth has no nucleus."""
    if true.max() == 0:
        return [math.nan] * 3
    return oracle.fast_pq(oracle.remap(true), oracle.remap(pred))


def test_hovernet_instance_statistics_are_plain_means_with_the_empty_patch_policy(fold1, all_a):
    numbers = all_a["metrics"]["hovernet_inst"]
    rows, skipped, empty_pred = [], 0, 0
    for i, (_, true_instance, _) in enumerate(fold1["truth"]):
        pred_instance, _ = pred_maps(fold1["preds"]["a"][i])
        row = oracle.hovernet_inst(true_instance.astype(np.int64), pred_instance)
        if row is None:
            skipped += 1
            continue
        empty_pred += pred_instance.max() == 0 and true_instance.max() > 0
        rows.append(row)
    means = np.mean(rows, axis=0)  # run_nuclei_inst_stat's np.mean over the scored patches
    for k, name in enumerate(instance.STATS):
        close(numbers[name], means[k])
    assert (numbers["skipped_empty"], numbers["empty_prediction"]) == (skipped, empty_pred) == (1, 1)
    assert 0.3 < numbers["aji"] < numbers["aji_plus"] < 1


def test_cellvit_values_are_image_means_without_the_tissue_step(fold1, all_a):
    numbers = all_a["metrics"]["cellvit"]
    images = []
    for i, (semantic, true_instance, _) in enumerate(fold1["truth"]):
        pred_instance, pred_classes = pred_maps(fold1["preds"]["a"][i])
        images.append(oracle.cellvit_image(true_instance.astype(np.int64), semantic, pred_instance, pred_classes))
    for q, k in (("DQ", 0), ("SQ", 1), ("PQ", 2)):
        close(numbers[f"b{q}"], oracle.nanmean([im["b"][k] for im in images]))
        close(numbers[f"m{q}"], oracle.nanmean([oracle.nanmean([c[k] for c in im["classes"]]) for im in images]))
        for j, name in enumerate(pim.NUCLEUS_CLASSES):
            close(numbers["per_class"][name][q], oracle.nanmean([im["classes"][j][k] for im in images]))
    close(numbers["binary_dice"], oracle.nanmean([im["dice"] for im in images]))
    close(numbers["binary_jaccard"], oracle.nanmean([im["jaccard"] for im in images]))
    by_tissue = {}
    for im, tissue in zip(images, fold1["tissues"]):
        by_tissue.setdefault(tissue, []).append(im)
    for tissue, ims in by_tissue.items():
        close(numbers["per_tissue"][tissue]["dice"], oracle.nanmean([im["dice"] for im in ims]))
        close(numbers["per_tissue"][tissue]["bPQ"], oracle.nanmean([im["b"][2] for im in ims]))
    # The void patch (truth and prediction empty): Dice 0 and counted, Jaccard NaN and skipped (torchmetrics 0.11.4).
    assert images[1]["dice"] == 0.0 and math.isnan(images[1]["jaccard"])
    assert numbers["bPQ"] != all_a["bPQ"]  # the reason CellViT's JSON differs from the paper's table


def test_conic_mpq_plus_and_r2_equal_the_pooled_definition_and_sklearn(fold1, all_a):
    numbers = all_a["metrics"]["conic"]
    trues = [(inst.astype(np.int64), sem.astype(np.int64)) for sem, inst, _ in fold1["truth"]]
    preds = [pred_maps(p) for p in fold1["preds"]["a"]]
    expected = oracle.conic(trues, preds)
    close(numbers["mPQ+"], expected["mPQ+"])
    close(numbers["R2"], expected["R2"])
    close(numbers["PQ"], expected["PQ"])
    for j, name in enumerate(pim.NUCLEUS_CLASSES):
        close(numbers["per_class"][name]["PQ+"], expected["per_class"][j])
        close(numbers["per_class"][name]["R2"], expected["per_class_r2"][j])


def test_r2_of_a_constant_truth_is_sklearns_1_or_0():
    from sklearn.metrics import r2_score

    columns = panoptic.CONIC_COLUMNS
    for pred_counts, expected in (([3, 3, 3], 1.0), ([3, 4, 3], 0.0)):
        state = np.zeros((3, len(columns)))
        for k, count in enumerate(pred_counts):
            state[k, columns.index("neoplastic_true")] = 3
            state[k, columns.index("neoplastic_pred")] = count
            state[k, columns.index("neoplastic_count_sq")] = 9
            state[k, columns.index("neoplastic_residual_sq")] = (3 - count) ** 2
        sums = state.sum(axis=0)[None, None]
        got = panoptic.conic_reduce(sums, patches=np.array([3.0]))["per_class"]["neoplastic"]["R2"][0]
        assert got == expected == r2_score([3, 3, 3], pred_counts)


def test_the_default_computes_the_headline_families_and_all_at_most_adds_the_others(fold1, three_folds, tmp_path):
    default = run(three_folds, fold1["folder"] / "a.npy", tmp_path)
    assert list(default["metrics"]) == ["pannuke", "hovernet"]
    chosen = run(three_folds, fold1["folder"] / "a.npy", tmp_path, "--metrics", "conic")
    assert list(chosen["metrics"]) == ["pannuke", "hovernet", "conic"]
    assert default["mPQ"] == chosen["mPQ"] and default["detection"] == chosen["detection"]


def test_unknown_metrics_and_a_negative_bootstrap_are_usage_errors(fold1, three_folds, tmp_path, capsys):
    argv = ["evaluate", "--pred", str(fold1["folder"] / "a.npy"), "--data-dir", three_folds, "--config", "folds"]
    for extra, message in (
        (["--metrics", "pannuke,aji"], f"unknown --metrics aji; valid: all, {', '.join(metrics.METRIC_NAMES)}"),
        (["--bootstrap", "-1"], "--bootstrap must be a number of replicates (0 for none), got -1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--split", "fold1", *extra])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"pannuke-imagemask evaluate: error: {message}"


# ---------------------------------------------------------------------------------------------
# Intervals and comparison, reproduced from docs/evaluate.md's description alone.
# ---------------------------------------------------------------------------------------------


def documented_weights(tissues, replicates, seed):
    """The multiplicities of docs/evaluate.md: per tissue in pim.TISSUES order, rng.integers(0, n, (R, n))."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((replicates, len(tissues)), dtype=np.int64)
    for tissue in pim.TISSUES:
        rows = [i for i, t in enumerate(tissues) if t == tissue]
        if not rows:
            continue
        draws = rng.integers(0, len(rows), size=(replicates, len(rows)))
        for r in range(replicates):
            for d in draws[r]:
                weights[r, rows[d]] += 1
    return weights


def resampled_headline(scores, counts, tissues, weights):
    """mPQ, bPQ (pq_oracle) and F1 (pooled counts) of the patches repeated by their weights."""
    picked = [i for i, w in enumerate(weights) for _ in range(int(w))]
    summary = pq_oracle.summarize([scores[i] for i in picked], [tissues[i] for i in picked])
    total = np.sum([counts[i] for i in picked], axis=0)
    tp, fp, fn = total[0], total[1], total[2]
    return summary["mPQ"], summary["bPQ"], 2 * tp / (2 * tp + fp + fn)


def per_patch(fold1, name):
    masks, preds = fold1["masks"], fold1["preds"][name]
    scores = [pq_oracle.patch_scores(masks[i], preds[i]) for i in range(len(masks))]
    counts = [
        f1_oracle.type_stats([(*f1_oracle.truth_nuclei(masks[i]), *f1_oracle.binary_nuclei(preds[i]))])["counts"]
        for i in range(len(masks))
    ]
    return scores, counts


def test_bootstrap_intervals_are_reproduced_bit_for_bit_from_the_documented_resampling(fold1, three_folds, tmp_path):
    result = run(three_folds, fold1["folder"] / "a.npy", tmp_path, "--bootstrap", "60", "--seed", "7")
    info = result["intervals"]
    assert (info["method"], info["level"], info["replicates"], info["seed"]) == ("percentile", 0.95, 60, 7)
    scores, counts = per_patch(fold1, "a")
    weights = documented_weights(fold1["tissues"], 60, 7)
    replicates = np.array([resampled_headline(scores, counts, fold1["tissues"], w) for w in weights])
    for k, (family, key) in enumerate((("pannuke", "mPQ"), ("pannuke", "bPQ"), ("hovernet", "f1"))):
        expected = np.percentile(replicates[:, k], [2.5, 97.5])
        close(info["values"][family][key], expected)
    low, high = info["values"]["pannuke"]["mPQ"]
    assert low < result["mPQ"] < high
    # Every replicate keeps every tissue: a tissue's weights sum to its patch count.
    for tissue in set(fold1["tissues"]):
        rows = [i for i, t in enumerate(fold1["tissues"]) if t == tissue]
        assert (weights[:, rows].sum(axis=1) == len(rows)).all()


def test_compare_gives_both_values_the_paired_interval_and_the_permutation_p_value(fold1, three_folds, tmp_path):
    out = tmp_path / "c.json"
    argv = ["evaluate", "--pred", str(fold1["folder"] / "a.npy"), "--compare", str(fold1["folder"] / "b.npy")]
    argv += ["--data-dir", three_folds, "--config", "folds", "--split", "fold1", "--bootstrap", "40", "--seed", "3"]
    assert main([*argv, "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    alone_a = run(three_folds, fold1["folder"] / "a.npy", tmp_path)
    alone_b = run(three_folds, fold1["folder"] / "b.npy", tmp_path)
    assert result["pred"]["mPQ"] == alone_a["mPQ"] and result["compare"]["mPQ"] == alone_b["mPQ"]
    row = result["comparison"]["values"]["pannuke"]["mPQ"]
    assert (row["a"], row["b"]) == (alone_a["mPQ"], alone_b["mPQ"])
    close(row["difference"], alone_a["mPQ"] - alone_b["mPQ"], 1e-15)
    scores_a, counts_a = per_patch(fold1, "a")
    scores_b, counts_b = per_patch(fold1, "b")
    tissues = fold1["tissues"]
    weights = documented_weights(tissues, 40, 3)
    diffs = [
        resampled_headline(scores_a, counts_a, tissues, w)[0] - resampled_headline(scores_b, counts_b, tissues, w)[0]
        for w in weights
    ]
    close(row["interval"], np.percentile(diffs, [2.5, 97.5]))
    keep = np.random.default_rng(3 + 1).integers(0, 2, size=(40, len(tissues)))
    observed = abs(row["difference"])
    extreme = 0
    for mask in keep:
        a_side = [scores_a[i] if mask[i] else scores_b[i] for i in range(len(tissues))]
        b_side = [scores_b[i] if mask[i] else scores_a[i] for i in range(len(tissues))]
        a_value = pq_oracle.summarize(a_side, tissues)["mPQ"]
        b_value = pq_oracle.summarize(b_side, tissues)["mPQ"]
        extreme += abs(a_value - b_value) >= observed - 1e-12
    assert row["p_value"] == (1 + extreme) / (1 + 40)
    assert result["comparison"]["test"] == "paired permutation, two-sided"


def test_the_commands_pixel_numbers_equal_sklearn_on_the_splits_pooled_pixels(fold1, all_a):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, jaccard_score

    truth = np.concatenate([semantic.ravel() for semantic, _, _ in fold1["truth"]])
    pred = np.concatenate([pred_maps(p)[1].ravel() for p in fold1["preds"]["a"]])
    thunder, pfm = all_a["metrics"]["thunder"], all_a["metrics"]["pfm_densebench"]
    close(thunder["accuracy"], accuracy_score(truth, pred))
    close(thunder["balanced_accuracy"], balanced_accuracy_score(truth, pred))
    close(thunder["f1_macro"], f1_score(truth, pred, average="macro"))
    close(thunder["jaccard_macro"], jaccard_score(truth, pred, average="macro"))
    close(pfm["miou"], jaccard_score(truth, pred, average="macro"))
    per_class = jaccard_score(truth, pred, average=None, labels=range(6))
    for c, name in enumerate(["background", *pim.NUCLEUS_CLASSES]):
        close(pfm[f"iou_{name}"], per_class[c])
    assert 0.5 < thunder["accuracy"] < 1 and 0 < all_a["metrics"]["pathocellbench"]["f1_macro"] < 1


def test_the_type_confusion_counts_hovernets_pairs_and_unpaired_nuclei(fold1, all_a):
    paired = np.zeros((6, 6), dtype=np.int64)
    missed, spurious = np.zeros(6, dtype=np.int64), np.zeros(6, dtype=np.int64)
    for mask, pred in zip(fold1["masks"], fold1["preds"]["a"]):
        true_xy, true_types = f1_oracle.truth_nuclei(mask)
        pred_xy, pred_types = f1_oracle.binary_nuclei(pred)
        if len(true_xy) == 0:  # HoVer-Net's dummy point (0, 0) of type 0
            true_xy, true_types = np.zeros((1, 2)), np.zeros(1, dtype=np.int64)
        if len(pred_xy) == 0:
            pred_xy, pred_types = np.zeros((1, 2)), np.zeros(1, dtype=np.int64)
        true_xy, pred_xy = np.asarray(true_xy, np.float32), np.asarray(pred_xy, np.float32)
        pairs, unpaired_true, unpaired_pred = f1_oracle.pair_coordinates(true_xy, pred_xy, 12)
        for t, p in pairs:
            paired[true_types[t], pred_types[p]] += 1
        np.add.at(missed, np.asarray(true_types)[unpaired_true], 1)
        np.add.at(spurious, np.asarray(pred_types)[unpaired_pred], 1)
    confusion = all_a["metrics"]["hovernet"]["confusion"]
    assert confusion["labels"] == ["none", *pim.NUCLEUS_CLASSES]
    assert confusion["paired"] == paired.tolist()
    assert confusion["missed"] == dict(zip(pim.NUCLEUS_CLASSES, missed[1:].tolist()))
    assert confusion["spurious"] == dict(zip(pim.NUCLEUS_CLASSES, spurious[1:].tolist()))
    assert round(all_a["detection"]["type_accuracy"] * paired.sum()) == np.trace(paired)  # its pairs of one type
