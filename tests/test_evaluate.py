"""evaluate: PanNuke's mPQ and bPQ equal a slow per-nucleus oracle, on hand cases and on randomised predictions."""

import csv
import json
import math
import os
import statistics
import subprocess
import sys

import f1_oracle
import metric_helpers as mh
import numpy as np
import pq_oracle
import pytest
from pannuke_fixtures import raw_fold
from perturb import perturb

import pannuke_imagemask as pim
from convert import detection, panoptic, results
from convert.__main__ import main
from convert.predictions import PatchPrediction, hovernet_to_channels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERFECT_1 = 1 / (1 + 1e-6)  # one nucleus found exactly: the official script's 0.999999


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), atol=1e-12, rtol=0)


def channels(*paint):
    """(8, 8, 5) int channels painted from (channel, id, rows, cols) tuples."""
    out = np.zeros((8, 8, 5), dtype=np.int64)
    for channel, value, rows, cols in paint:
        out[rows, cols, channel] = value
    return out


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------------------------

TRUTH = channels(
    (0, 3, slice(0, 2), slice(0, 2)),
    (0, 70, slice(4, 6), slice(0, 3)),
    (0, 12, slice(6, 8), slice(6, 8)),
    (3, 5, slice(0, 3), slice(5, 8)),
)


def test_a_perfect_prediction_scores_0_999999_per_nucleus_class_present():
    scores = mh.patch_scores(TRUTH, TRUTH.copy())
    neoplastic, dead = 3 / (3 + 1e-6), PERFECT_1
    close(scores, [neoplastic, np.nan, np.nan, dead, np.nan, (neoplastic + dead) / 2, 4 / (4 + 1e-6)])
    assert scores[3] == pytest.approx(0.999999, abs=1e-11)


def test_an_empty_prediction_scores_zero():
    close(mh.patch_scores(TRUTH, np.zeros_like(TRUTH)), [0, np.nan, np.nan, 0, np.nan, 0, 0])


def test_a_class_absent_from_the_truth_is_nan_and_its_false_positives_do_not_count():
    pred = TRUTH.copy()
    pred[7, 0:4, 1] = 99  # a spurious inflammatory nucleus; the truth has none
    pred[7, 0:4, 4] = 98
    scores = mh.patch_scores(TRUTH, pred)
    assert math.isnan(scores[1]) and math.isnan(scores[4])
    assert scores[5] == (3 / (3 + 1e-6) + PERFECT_1) / 2
    # The binary map has no classes: the spurious nucleus is a false positive there.
    close(scores[6], 4 / (4 + 0.5) * 4 / (4 + 1e-6))


def test_iou_of_exactly_one_half_is_not_a_match():
    true = np.zeros((4, 4), dtype=np.int64)
    true[0, 0:3] = 1
    half = np.zeros_like(true)
    half[0, 1:4] = 1  # 2 shared pixels of 4 in the union
    assert panoptic.panoptic_quality(true, half) == 0.0
    two_thirds = np.zeros_like(true)
    two_thirds[0, 1:3] = 1
    assert panoptic.panoptic_quality(true, two_thirds) == (2 / 3) / (1 + 1e-6)
    assert pq_oracle.pq(true, half) == 0.0


def test_a_nucleus_covered_by_a_later_channel_counts_in_its_class_not_in_the_binary_map():
    truth = channels((0, 9, slice(2, 4), slice(2, 4)), (3, 4, slice(1, 5), slice(1, 5)), (0, 2, slice(6, 8), 0))
    two = 2 / (2 + 1e-6)
    close(mh.patch_scores(truth, truth.copy()), [two, np.nan, np.nan, PERFECT_1, np.nan, (two + PERFECT_1) / 2, two])
    missed = truth.copy()
    missed[..., 0][missed[..., 0] == 9] = 0  # the covered nucleus is invisible: predicting it is not required in bPQ
    scores = mh.patch_scores(truth, missed)
    close(scores[[0, 6]], [1 / 1.5 * 1 / (1 + 1e-6), two])
    close(scores, pq_oracle.patch_scores(truth, missed))


def test_a_map_without_background_is_scored_like_any_other():
    whole = np.full((8, 8, 5), 0, dtype=np.int64)
    whole[..., 2] = 7  # one connective nucleus covering the patch: no background pixel
    close(mh.patch_scores(whole, whole.copy()), [np.nan, np.nan, PERFECT_1, np.nan, np.nan, PERFECT_1, PERFECT_1])
    halves = whole.copy()
    halves[:, 4:, 2] = 8  # two predicted nuclei of IoU exactly 0.5 each: no match
    close(mh.patch_scores(whole, halves), [np.nan, np.nan, 0, np.nan, np.nan, 0, 0])
    three_quarters = whole.copy()
    three_quarters[:, 6:, 2] = 8
    close(panoptic.panoptic_quality(whole[..., 2], three_quarters[..., 2]), 1 / 1.5 * 0.75 / (1 + 1e-6))


def test_a_patch_without_nuclei_is_nan_everywhere_and_skipped_by_the_means():
    scores = mh.patch_scores(np.zeros((8, 8, 5), np.uint16), TRUTH)
    assert np.isnan(scores).all()
    summary = mh.summarize([scores, mh.patch_scores(TRUTH, TRUTH.copy())], ["Breast", "Breast"])
    assert summary["per_tissue"]["Breast"] == {
        "patches": 2,
        "mPQ": (3 / (3 + 1e-6) + PERFECT_1) / 2,
        "bPQ": 4 / (4 + 1e-6),
    }
    assert summary["per_tissue"]["Colon"]["patches"] == 0 and math.isnan(summary["per_tissue"]["Colon"]["mPQ"])
    assert summary["mPQ"] == summary["per_tissue"]["Breast"]["mPQ"]


def test_tissues_weigh_equally_and_classes_are_averaged_over_patches():
    scores = [
        [1, np.nan, np.nan, np.nan, np.nan, 1, 1],
        [0, 0.5, np.nan, np.nan, np.nan, 0.25, 0.5],
        [0] + [np.nan] * 4 + [0, 0],
    ]
    summary = mh.summarize(scores, ["Breast", "Breast", "Liver"])
    assert summary["mPQ"] == (0.625 + 0) / 2 and summary["bPQ"] == (0.75 + 0) / 2
    assert summary["per_class"]["neoplastic"] == 1 / 3 and summary["per_class"]["inflammatory"] == 0.5
    assert math.isnan(summary["per_class"]["dead"])


def test_a_nucleus_takes_the_class_of_most_of_its_pixels_ties_to_the_lower_type():
    instance = np.zeros((4, 4), dtype=np.int64)
    types = np.zeros_like(instance)
    instance[0, :], types[0, :] = 50, [2, 2, 2, 5]  # inflammatory
    instance[1, :], types[1, :] = 7, [4, 4, 1, 1]  # tie: neoplastic
    instance[2, :], types[2, :] = 300, [0, 0, 0, 3]  # mostly background: dropped
    out = hovernet_to_channels(instance, types)
    expected = np.zeros((4, 4, 5), dtype=np.int64)
    expected[0, :, 1] = 2
    expected[1, :, 0] = 1
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="type channel has values above 5"):
        hovernet_to_channels(instance, types + 3)


# ---------------------------------------------------------------------------------------------
# Randomised predictions against the oracle.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fold1_prediction(three_folds, tmp_path_factory):
    """A perturbed prediction of every patch of fold 1 (24 patches: quirks, a void and an empty patch)."""
    _, masks, tissues = raw_fold(three_folds, 1, "kaggle")
    rng = np.random.default_rng(10)
    preds = np.stack([perturb(masks[i, ..., :5], rng) for i in range(len(masks))])
    preds[5] = masks[5, ..., :5]  # one perfect patch
    preds[6] = 0  # one empty prediction
    path = tmp_path_factory.mktemp("pred") / "masks.npy"
    np.save(path, preds.astype(np.float64))
    return {"masks": masks, "tissues": tissues, "preds": preds, "path": str(path)}


def f1_expected(masks, preds, radius=12):
    """HoVer-Net's F1 numbers of masks-layout predictions: truth from the instance mask, predictions collapsed."""
    patches = [(*f1_oracle.truth_nuclei(m), *f1_oracle.binary_nuclei(p)) for m, p in zip(masks, preds)]
    return f1_oracle.type_stats(patches, radius)


def assert_f1(result, expected, radius=12):
    got = result["detection"]
    assert got["radius"] == radius
    for key in ("f1", "precision", "recall", "type_accuracy"):
        assert got[key] == expected[key], key  # integer counts, the same formulas: exact
    assert list(result["f1_per_class"]) == pim.NUCLEUS_CLASSES
    for t, name in enumerate(pim.NUCLEUS_CLASSES, start=1):
        value = result["f1_per_class"][name]
        assert (value is None and math.isnan(expected["f1_per_type"][t])) or value == expected["f1_per_type"][t]


@pytest.fixture(scope="module")
def oracle_fold1(fold1_prediction):
    masks, preds = fold1_prediction["masks"], fold1_prediction["preds"]
    scores = [pq_oracle.patch_scores(np.asarray(masks[i]), preds[i]) for i in range(len(masks))]
    return scores, pq_oracle.summarize(scores, fold1_prediction["tissues"])


@pytest.fixture(scope="module")
def f1_fold1(fold1_prediction):
    return f1_expected(fold1_prediction["masks"], fold1_prediction["preds"])


def test_patch_scores_equal_the_oracle_on_randomised_predictions(fold1_prediction, oracle_fold1):
    masks, preds = fold1_prediction["masks"], fold1_prediction["preds"]
    for i in range(len(masks)):
        close(mh.patch_scores(pim.mask_to_ids(masks[i]), preds[i]), oracle_fold1[0][i])


def test_sparse_overlaps_give_the_same_scores(fold1_prediction, monkeypatch):
    masks, preds = fold1_prediction["masks"], fold1_prediction["preds"]
    fast = [mh.patch_scores(pim.mask_to_ids(masks[i]), preds[i]) for i in range(8)]
    monkeypatch.setattr(panoptic, "DENSE_PAIRS", 0)
    for i in range(8):
        close(mh.patch_scores(pim.mask_to_ids(masks[i]), preds[i]), fast[i])


def _run(three_folds, pred, tmp_path, *extra):
    out = tmp_path / "result.json"
    per_patch = tmp_path / "patches.csv"
    argv = ["evaluate", "--pred", pred, "--data-dir", three_folds, "--config", "folds", "--split", "fold1"]
    code = main([*argv, "--json", str(out), "--per-patch", str(per_patch), "--quiet", *extra])
    assert code == 0
    with open(per_patch, newline="") as f:
        rows = list(csv.reader(f))
    return json.loads(out.read_text()), rows


def test_the_command_equals_the_oracle_per_patch_per_class_per_tissue_and_overall(
    three_folds, fold1_prediction, oracle_fold1, f1_fold1, tmp_path, capsys
):
    result, rows = _run(three_folds, fold1_prediction["path"], tmp_path)
    scores, summary = oracle_fold1
    detection_columns = ["det_tp", "det_fp", "det_fn", "det_same_type"]
    assert rows[0] == (
        ["id", "fold", "index", "tissue"]
        + [f"pq_{n}" for n in pim.NUCLEUS_CLASSES]
        + ["mPQ", "bPQ"]
        + detection_columns
    )
    assert [r[:4] for r in rows[1:]] == [
        [pim.patch_id(1, i), "1", str(i), t] for i, t in enumerate(fold1_prediction["tissues"])
    ]
    close([[float(v) if v else np.nan for v in r[4:11]] for r in rows[1:]], scores)
    assert rows[1 + 1][4:11] == [""] * 7  # the void patch has no nucleus
    # Each patch's HoVer-Net counts, from the oracle run on that patch alone; their sums give the F1.
    masks, preds = fold1_prediction["masks"], fold1_prediction["preds"]
    per_patch = [f1_expected(masks[i : i + 1], preds[i : i + 1])["counts"] for i in range(len(masks))]
    assert [[int(v) for v in r[11:]] for r in rows[1:]] == per_patch
    assert np.sum(per_patch, axis=0).tolist() == f1_fold1["counts"]
    assert per_patch[1][0] == 0 and per_patch[1][2] == 1  # the void patch: HoVer-Net's dummy true point, unpaired
    for key in ("mPQ", "bPQ"):
        close(result[key], summary[key])
    for name in pim.NUCLEUS_CLASSES:
        close(result["per_class"][name], summary["per_class"][name])
    assert list(result["per_tissue"]) == pim.TISSUES
    absent = [t for t in pim.TISSUES if t not in fold1_prediction["tissues"]]
    assert result["per_tissue"][absent[0]] == {"patches": 0, "mPQ": None, "bPQ": None}  # NaN is null in JSON
    for tissue, expected in summary["per_tissue"].items():
        got = result["per_tissue"][tissue]
        assert got["patches"] == expected["patches"]
        close([np.nan if got[k] is None else got[k] for k in ("mPQ", "bPQ")], [expected["mPQ"], expected["bPQ"]])
    assert result["patches"] == 24 and result["split"] == "fold1" and result["config"] == "folds"
    assert result["split_seed"] is None and result["source"] == {"data_dir": three_folds, "sample": False}
    assert result["pred"] == {"path": fold1_prediction["path"], "layout": "masks", "classified": True}
    assert_f1(result, f1_fold1)
    assert 0.3 < f1_fold1["f1"] < 0.95 and 0.3 < f1_fold1["type_accuracy"] < 0.95  # neither trivial nor perfect
    out = capsys.readouterr().out
    assert f"mPQ  {summary['mPQ']:.4f}" in out and f"bPQ  {summary['bPQ']:.4f}" in out
    assert f"detection F1   {f1_fold1['f1']:.4f}  (precision {f1_fold1['precision']:.4f}, " in out
    assert f"type accuracy  {f1_fold1['type_accuracy']:.4f}" in out
    name, value = pim.NUCLEUS_CLASSES[3], summary["per_class"][pim.NUCLEUS_CLASSES[3]]
    assert f"{name:<14} {value:>8.4f} {f1_fold1['f1_per_type'][4]:>8.4f}" in out
    assert "Colon" in out and "n/a" in out


def test_the_f1_radius_is_an_option(three_folds, fold1_prediction, tmp_path):
    result, _ = _run(three_folds, fold1_prediction["path"], tmp_path, "--f1-radius", "6")
    expected = f1_expected(fold1_prediction["masks"], fold1_prediction["preds"], radius=6)
    assert_f1(result, expected, radius=6)
    assert expected["f1"] < f1_expected(fold1_prediction["masks"], fold1_prediction["preds"])["f1"]


def test_a_split_over_three_folds_equals_the_oracle(three_folds, tmp_path):
    # --config all: the train split mixes the three folds and their layouts, and many tissues.
    folds = {1: raw_fold(three_folds, 1, "kaggle"), 2: raw_fold(os.path.join(three_folds, "fold_2"), 2, "kaggle-flat")}
    folds[3] = raw_fold(three_folds, 3, "official")
    rows = pim.assign_splits({fold: arrays[2] for fold, arrays in folds.items()})["train"]
    rng = np.random.default_rng(11)
    truth = [np.asarray(folds[fold][1][index]) for fold, index in rows]
    preds = np.stack([perturb(t[..., :5], rng) for t in truth]).astype(np.int32)
    np.save(tmp_path / "train.npy", preds)
    argv = ["evaluate", "--pred", str(tmp_path / "train.npy"), "--data-dir", three_folds, "--config", "all"]
    assert main([*argv, "--split", "train", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    tissues = [folds[fold][2][index] for fold, index in rows]
    expected = pq_oracle.summarize([pq_oracle.patch_scores(t, p) for t, p in zip(truth, preds)], tissues)
    assert result["patches"] == len(rows) and sum(t["patches"] > 0 for t in result["per_tissue"].values()) >= 3
    close([result["mPQ"], result["bPQ"]], [expected["mPQ"], expected["bPQ"]])
    close(list(result["per_class"].values()), list(expected["per_class"].values()))
    got = [[np.nan if t[k] is None else t[k] for k in ("mPQ", "bPQ")] for t in result["per_tissue"].values()]
    close(got, [[t["mPQ"], t["bPQ"]] for t in expected["per_tissue"].values()])


def _hovernet_folder(folder, preds, rgb_every=2):
    """Write the predictions as HoVer-Net <id>.npy (instance, type), some with RGB channels in front."""
    folder.mkdir()
    flat = np.zeros_like(preds)
    for i, pred in enumerate(preds):
        collapsed = pq_oracle.binarize(pred)  # later channels on top, as the metric collapses them
        kind = np.zeros(collapsed.shape, dtype=np.int64)
        for c in range(5):
            kind[pred[..., c] != 0] = c + 1
        channels = [collapsed, kind]
        if i % rgb_every == 0:
            channels = [np.full(collapsed.shape, 128)] * 3 + channels
        np.save(folder / f"{pim.patch_id(1, i)}.npy", np.stack(channels, axis=-1).astype(np.int32))
        for c in range(5):
            flat[i, ..., c] = np.where(kind == c + 1, collapsed, 0)
    return flat


def test_both_prediction_layouts_give_identical_numbers(three_folds, fold1_prediction, tmp_path):
    flat = _hovernet_folder(tmp_path / "hovernet", fold1_prediction["preds"])
    np.save(tmp_path / "masks.npy", flat.astype(np.uint32))
    from_folder, folder_rows = _run(three_folds, str(tmp_path / "hovernet"), tmp_path)
    from_masks, masks_rows = _run(three_folds, str(tmp_path / "masks.npy"), tmp_path)
    assert folder_rows == masks_rows
    assert {**from_folder, "pred": None} == {**from_masks, "pred": None}
    assert from_folder["pred"]["layout"] == "hovernet"
    assert from_folder["detection"]["f1"] == f1_expected(fold1_prediction["masks"], flat)["f1"]


def test_two_processes_end_and_give_identical_numbers(three_folds, fold1_prediction, tmp_path):
    one, _ = _run(three_folds, fold1_prediction["path"], tmp_path)
    argv = ["evaluate", "--pred", fold1_prediction["path"], "--data-dir", three_folds, "--config", "folds"]
    argv += ["--split", "fold1", "--json", str(tmp_path / "two.json"), "--num-proc", "2", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "convert", *argv], cwd=ROOT, timeout=120, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "two.json").read_text()) == one


def test_one_fold_on_disk_is_enough_for_its_fold_split(kaggle_part1, fold1_prediction, tmp_path):
    argv = ["evaluate", "--pred", fold1_prediction["path"], "--data-dir", kaggle_part1, "--config", "folds"]
    assert main([*argv, "--split", "fold1", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["patches"] == 24


def test_the_default_split_is_test_and_valid_names_validation(kaggle_part1, tmp_path, capsys):
    _, masks, tissues = raw_fold(kaggle_part1)
    test_rows = pim.assign_splits({1: tissues})["test"]
    np.save(tmp_path / "test.npy", np.stack([masks[i] for _, i in test_rows]))
    assert main(["evaluate", "--pred", str(tmp_path / "test.npy"), "--data-dir", kaggle_part1, "--quiet"]) == 0
    assert f"split test of config part1: {len(test_rows)} patches" in capsys.readouterr().out
    valid_rows = pim.assign_splits({1: tissues})["validation"]
    empty = np.zeros((len(valid_rows), 256, 256, 6))
    empty[..., 5] = np.nan  # channels after 0..4 are not read: they may hold anything
    np.save(tmp_path / "valid.npy", empty)
    argv = ["evaluate", "--pred", str(tmp_path / "valid.npy"), "--data-dir", kaggle_part1, "--split", "valid"]
    assert main([*argv, "--json", str(tmp_path / "v.json"), "--quiet"]) == 0
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["split"] == "validation" and result["mPQ"] == 0 and result["bPQ"] == 0
    assert result["split_seed"] == 0 and result["split_ratios"] == [0.8, 0.15, 0.05]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing written.
# ---------------------------------------------------------------------------------------------


def _error(argv, capsys, tmp_path):
    out = tmp_path / "bad.json"
    assert main([*argv, "--json", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pannuke-imagemask evaluate: error: ")
    assert not out.exists()
    return err


def test_bad_masks_predictions_are_one_line_errors(three_folds, fold1_prediction, tmp_path, capsys):
    base = ["evaluate", "--data-dir", three_folds, "--config", "folds", "--split", "fold1"]
    preds = fold1_prediction["preds"]
    np.save(tmp_path / "short.npy", preds[:20])
    assert "short.npy: 20 predictions, the split has 24 patches" in _error(
        [*base, "--pred", str(tmp_path / "short.npy")], capsys, tmp_path
    )
    np.save(tmp_path / "four.npy", preds[..., :4])
    assert "four.npy: shape (24, 256, 256, 4), expected" in _error(
        [*base, "--pred", str(tmp_path / "four.npy")], capsys, tmp_path
    )
    bad = preds.astype(np.float64)
    bad[9, 3, 3, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    err = _error([*base, "--pred", str(tmp_path / "nan.npy")], capsys, tmp_path)
    assert "nan.npy: fold1_00009: prediction has non-finite values" in err
    with open(tmp_path / "pickle.npy", "wb") as f:
        np.lib.format.write_array(f, np.array([{"x": 1}] * 24, dtype=object), allow_pickle=True)
    assert "refusing to unpickle" in _error([*base, "--pred", str(tmp_path / "pickle.npy")], capsys, tmp_path)
    assert "no such file or folder (--pred)" in _error([*base, "--pred", str(tmp_path / "none")], capsys, tmp_path)


def test_bad_prediction_folders_are_one_line_errors_naming_the_id(three_folds, fold1_prediction, tmp_path, capsys):
    base = ["evaluate", "--data-dir", three_folds, "--config", "folds", "--split", "fold1", "--pred"]
    folder = tmp_path / "hovernet"
    _hovernet_folder(folder, fold1_prediction["preds"])
    (folder / "fold1_00003.npy").rename(tmp_path / "kept.npy")
    (folder / "fold1_00007.npy").unlink()
    err = _error([*base, str(folder)], capsys, tmp_path)
    assert "2 prediction(s) missing, the first fold1_00003.npy" in err
    (tmp_path / "kept.npy").rename(folder / "fold1_00003.npy")
    np.save(folder / "fold1_00007.npy", np.zeros((256, 256, 2), np.int32))
    np.save(folder / "fold2_00001.npy", np.zeros((256, 256, 2), np.int32))
    (folder / "notes.txt").write_text("ignored")
    assert "1 prediction(s) not in the split, the first fold2_00001.npy" in _error(
        [*base, str(folder)], capsys, tmp_path
    )
    (folder / "fold2_00001.npy").unlink()
    np.save(folder / "fold1_00011.npy", np.zeros((256, 256), np.int32))
    err = _error([*base, str(folder)], capsys, tmp_path)
    assert "fold1_00011.npy: prediction for fold1_00011 has shape (256, 256), expected (256, 256, C)" in err


def test_a_bad_truth_patch_names_file_and_patch(writable_fold, tmp_path, capsys):
    masks = np.load(writable_fold / "Part 1" / "Masks" / "masks.npy", mmap_mode="r+")
    masks[7, 0, 0, 0] = 0.5
    masks.flush()
    del masks
    tissues = np.load(writable_fold / "Part 1" / "Images" / "types.npy").tolist()
    rows = pim.assign_splits({1: tissues})["train"]
    assert (1, 7) in rows
    np.save(tmp_path / "p.npy", np.zeros((len(rows), 256, 256, 5), np.uint8))
    argv = ["evaluate", "--pred", str(tmp_path / "p.npy"), "--data-dir", str(writable_fold), "--split", "train"]
    assert "Masks/masks.npy: patch 7: mask has non-integer values (e.g. 0.5)" in _error(argv, capsys, tmp_path)


def test_usage_errors_exit_2(three_folds, tmp_path, capsys):
    for argv, message in [
        (["--data-dir", three_folds, "--config", "folds"], "--config folds needs --split; valid: fold1, fold2, fold3"),
        (["--data-dir", three_folds, "--split", "fold1"], "unknown split 'fold1' for --config part1; valid: train,"),
        ([], "one of --data-dir or --sample is required"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--pred", str(tmp_path / "p.npy"), *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_the_sample_is_scored_perfectly_by_its_own_masks(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    from convert.common import sample_dir

    _, masks, tissues = raw_fold(sample_dir((1,), cache))
    rows = pim.assign_splits({1: tissues})["test"]
    np.save(tmp_path / "p.npy", np.stack([masks[i] for _, i in rows]))
    argv = ["evaluate", "--pred", str(tmp_path / "p.npy"), "--sample", "--cache-dir", cache]
    assert main([*argv, "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["source"] == {"data_dir": None, "sample": True}
    assert 0.9999 < result["mPQ"] < 1 and 0.9999 < result["bPQ"] < 1


# ---------------------------------------------------------------------------------------------
# Class-agnostic predictions, the split options, the three-split protocol.
# ---------------------------------------------------------------------------------------------


def test_a_class_agnostic_prediction_has_no_class_pq_or_mpq_but_its_bpq_and_detection():
    prediction = PatchPrediction(TRUTH.copy(), np.array([[0.5, 0.5], [1.0, 4.5]]), np.zeros(2, dtype=np.int64))
    scores, counts = mh.score_patch(TRUTH, prediction, 12, classified=False)
    assert np.isnan(scores[:6]).all() and scores[6] == 4 / (4 + 1e-6)
    found = dict(zip(detection.COUNT_COLUMNS, counts))
    assert (found["pairs"], found["unpaired_pred"], found["unpaired_true"], found["same_type"]) == (2, 0, 2, 0)


def test_the_scored_rows_are_the_builders_split_for_any_seed_and_ratios(kaggle_part1, tmp_path):
    cache = str(tmp_path / "cache")
    seeds_ratios = [(7, ["0.5", "0.25", "0.25"]), (0, ["0.6", "0.2", "0.2"])]
    rows_seen = []
    for seed, ratios in seeds_ratios:
        built = pim.build(
            "part1", data_dir=kaggle_part1, cache_dir=cache, split_seed=seed, split_ratios=tuple(map(float, ratios))
        )
        for split in ("validation", "test"):
            ids = built[split]["id"]
            np.save(tmp_path / "p.npy", np.zeros((len(ids), 256, 256, 5), np.uint8))
            argv = ["evaluate", "--pred", str(tmp_path / "p.npy"), "--data-dir", kaggle_part1, "--split", split]
            argv += ["--split-seed", str(seed), "--split-ratios", *ratios, "--per-patch", str(tmp_path / "r.csv")]
            assert main([*argv, "--quiet"]) == 0
            with open(tmp_path / "r.csv", newline="") as f:
                scored = [row[0] for row in list(csv.reader(f))[1:]]
            assert scored == ids  # the same patches, in the same order
            rows_seen.append(scored)
    assert rows_seen[1] != rows_seen[3]  # the seed and ratios changed the test split


@pytest.fixture(scope="module")
def protocol_predictions(three_folds, fold1_prediction, tmp_path_factory):
    """split1: fold 3's truth; split2: a perturbed fold 3; split3: the perturbed fold 1 of the other tests."""
    _, masks, _ = raw_fold(three_folds, 3, "official")
    rng = np.random.default_rng(12)
    folder = tmp_path_factory.mktemp("protocol")
    np.save(folder / "split1.npy", np.asarray(masks[..., :5]))
    np.save(folder / "split2.npy", np.stack([perturb(m[..., :5], rng) for m in masks]).astype(np.int32))
    return {1: str(folder / "split1.npy"), 2: str(folder / "split2.npy"), 3: fold1_prediction["path"]}


def _protocol_argv(three_folds, paths):
    return ["evaluate", "--protocol", *[f"split{k}={path}" for k, path in paths.items()], "--data-dir", three_folds]


def _single(three_folds, pred, split, tmp_path):
    argv = ["evaluate", "--pred", pred, "--data-dir", three_folds, "--config", "folds", "--split", split]
    assert main([*argv, "--json", str(tmp_path / "single.json"), "--quiet"]) == 0
    return json.loads((tmp_path / "single.json").read_text())


def _numbers(result):
    """Every number the protocol aggregates, by name: None stays None."""
    out = {"mPQ": result["mPQ"], "bPQ": result["bPQ"]}
    out.update({f"PQ {n}": v for n, v in result["per_class"].items()})
    out.update({f"detection {k}": result["detection"][k] for k in ("f1", "precision", "recall", "type_accuracy")})
    out.update({f"F1 {n}": v for n, v in result["f1_per_class"].items()})
    for tissue, t in result["per_tissue"].items():
        out.update({f"{tissue} mPQ": t["mPQ"], f"{tissue} bPQ": t["bPQ"]})
    return out


def test_the_protocol_scores_split_1_and_2_on_fold_3_and_split_3_on_fold_1(
    three_folds, protocol_predictions, tmp_path, capsys
):
    # The splits are given out of order: each is still scored on its own test fold.
    paths = {3: protocol_predictions[3], 1: protocol_predictions[1], 2: protocol_predictions[2]}
    argv = [*_protocol_argv(three_folds, paths), "--json", str(tmp_path / "p.json"), "--per-patch"]
    assert main([*argv, str(tmp_path / "p.csv"), "--quiet"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "p.json").read_text())
    assert list(report["splits"]) == ["split1", "split2", "split3"] and report["std_ddof"] == 0
    for k, fold in ((1, "fold3"), (2, "fold3"), (3, "fold1")):
        assert report["splits"][f"split{k}"] == _single(three_folds, protocol_predictions[k], fold, tmp_path)
    splits = [_numbers(report["splits"][f"split{k}"]) for k in (1, 2, 3)]
    mean, std = _numbers(report["mean"]), _numbers(report["std"])
    assert list(mean) == list(splits[0]) and len(mean) == 2 + 5 + 4 + 5 + 2 * 19
    for name in mean:
        values = [s[name] for s in splits]
        if None in values:
            assert mean[name] is None and std[name] is None, name
        else:
            close(mean[name], statistics.fmean(values))
            close(std[name], statistics.pstdev(values))
    assert splits[0]["detection f1"] == 1.0 and splits[0]["detection type_accuracy"] == 1.0  # the truth itself
    assert 0 < std["mPQ"] < 0.5 and mean["Breast mPQ"] is not None
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["split", *results.PER_PATCH_COLUMNS]
    assert [r[:2] for r in rows[1:24]] == [["split1", pim.patch_id(3, i)] for i in range(23)]
    assert [r[:2] for r in rows[24:47]] == [["split2", pim.patch_id(3, i)] for i in range(23)]
    assert [r[:2] for r in rows[47:]] == [["split3", pim.patch_id(1, i)] for i in range(24)]
    assert "protocol of config folds: split1 on fold3, split2 on fold3, split3 on fold1" in out
    assert f"{'mPQ':<26}" + "".join(f"{v:>9.4f}" for v in [*(s["mPQ"] for s in splits), mean["mPQ"], std["mPQ"]]) in out
    assert "std: population standard deviation (ddof=0) over the three splits" in out


def _fake_result(value, tissue_value=None):
    classes = {name: value for name in pim.NUCLEUS_CLASSES}
    tissue = value if tissue_value is None else tissue_value
    return {
        "mPQ": value,
        "bPQ": value / 2,
        "per_class": classes,
        "detection": {"f1": value, "precision": value, "recall": value, "type_accuracy": value, "radius": 12.0},
        "f1_per_class": classes,
        "per_tissue": {t: {"patches": 1, "mPQ": tissue, "bPQ": tissue} for t in pim.TISSUES},
    }


def test_the_protocol_mean_and_population_std_by_hand():
    summary = results.protocol_summary([_fake_result(0.4), _fake_result(0.5, math.nan), _fake_result(0.6)])
    assert summary["mean"]["mPQ"] == pytest.approx(0.5, abs=1e-15)
    assert summary["std"]["mPQ"] == pytest.approx(0.1 * math.sqrt(2 / 3), abs=1e-15)  # ddof=0, not 0.1
    assert summary["mean"]["bPQ"] == pytest.approx(0.25, abs=1e-15)
    assert summary["std"]["detection"]["type_accuracy"] == pytest.approx(0.1 * math.sqrt(2 / 3), abs=1e-15)
    assert "radius" not in summary["mean"]["detection"]
    # A number one split does not have (a tissue without patches, a class-agnostic split) has no mean.
    assert math.isnan(summary["mean"]["per_tissue"]["Breast"]["mPQ"])
    assert math.isnan(summary["std"]["per_tissue"]["Breast"]["bPQ"])


def test_a_bad_protocol_prediction_is_one_line_nothing_scored_nothing_written(
    three_folds, protocol_predictions, tmp_path, capsys
):
    np.save(tmp_path / "short.npy", np.zeros((20, 256, 256, 5), np.uint8))
    paths = {**protocol_predictions, 3: str(tmp_path / "short.npy")}
    argv = [*_protocol_argv(three_folds, paths), "--per-patch", str(tmp_path / "p.csv")]
    err = _error(argv, capsys, tmp_path)
    assert "short.npy: 20 predictions, the split has 24 patches" in err
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob("*.incomplete"))


def test_protocol_usage_errors_exit_2(three_folds, protocol_predictions, capsys):
    one, two = (f"split{k}={protocol_predictions[k]}" for k in (1, 2))
    cases = [
        (["--protocol", one, two, one], "--protocol wants split1=PRED split2=PRED split3=PRED, each once"),
        (["--protocol", one, two, "split4=x"], "--protocol wants split1=PRED"),
        (["--protocol", one, two, "split3"], "--protocol wants split1=PRED"),
        (["--protocol", one, two, "split3=x", "--pred", "p.npy"], "not with --pred or --split"),
        (["--protocol", one, two, "split3=x", "--config", "all"], "--protocol scores the folds of --config folds"),
        ([], "one of --pred or --protocol is required"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--data-dir", three_folds, *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_a_bad_f1_radius_or_one_file_for_both_reports_is_one_line(three_folds, fold1_prediction, tmp_path, capsys):
    base = ["evaluate", "--pred", fold1_prediction["path"], "--data-dir", three_folds, "--config", "folds"]
    base += ["--split", "fold1"]
    err = _error([*base, "--f1-radius", "-1"], capsys, tmp_path)
    assert "--f1-radius must be a non-negative number of pixels, got -1" in err
    assert "--f1-radius must be" in _error([*base, "--f1-radius", "nan"], capsys, tmp_path)
    out = tmp_path / "bad.json"
    assert main([*base, "--json", str(out), "--per-patch", str(out), "--quiet"]) == 1
    assert "--json and --per-patch name the same file" in capsys.readouterr().err and not out.exists()


def test_a_cellpose_prediction_scores_bpq_and_detection_and_leaves_the_classes_not_available(
    three_folds, fold1_prediction, tmp_path, capsys
):
    from PIL import Image

    folder = tmp_path / "cellpose"
    folder.mkdir()
    preds = fold1_prediction["preds"]
    for i, pred in enumerate(preds):
        collapsed = pq_oracle.binarize(pred)
        if collapsed.any():  # cellpose writes no file for an image without masks
            Image.fromarray(collapsed.astype(np.uint16)).save(folder / f"{pim.patch_id(1, i)}_cp_masks.png")
    result, rows = _run(three_folds, str(folder), tmp_path)
    masks = fold1_prediction["masks"]
    expected = pq_oracle.summarize(
        [pq_oracle.patch_scores(np.asarray(masks[i]), preds[i]) for i in range(len(masks))], fold1_prediction["tissues"]
    )
    assert result["pred"] == {"path": str(folder), "layout": "cellpose", "classified": False}
    close(result["bPQ"], expected["bPQ"])
    assert result["mPQ"] is None and set(result["per_class"].values()) == {None}
    assert {t["mPQ"] for t in result["per_tissue"].values()} == {None}
    assert result["detection"]["type_accuracy"] is None and set(result["f1_per_class"].values()) == {None}
    # Detection ignores types: the same as the classified prediction's.
    assert result["detection"]["f1"] == f1_expected(masks, preds)["f1"]
    assert all(r[4:10] == [""] * 6 for r in rows[1:])  # class PQs and mPQ: empty cells, not 0
    # Per patch: detection counts as the classified prediction's, pairs of the same type not available.
    per_patch = [f1_expected(masks[i : i + 1], preds[i : i + 1])["counts"] for i in range(len(masks))]
    assert [r[11:] for r in rows[1:]] == [[str(tp), str(fp), str(fn), ""] for tp, fp, fn, _ in per_patch]
    out = capsys.readouterr().out
    assert "mPQ  n/a" in out and "type accuracy  n/a" in out and f"{'dead':<14} {'n/a':>8} {'n/a':>8}" in out


def test_the_protocol_on_the_sample_says_once_that_it_is_fake(cache, tmp_path, caplog):
    from convert.common import sample_dir

    root = sample_dir((1, 3), cache)
    paths = {}
    for fold in (1, 3):
        _, masks, _ = raw_fold(root, fold)
        paths[fold] = tmp_path / f"fold{fold}.npy"
        np.save(paths[fold], np.asarray(masks[..., :5]))
    argv = ["evaluate", "--sample", "--cache-dir", cache, "--json", str(tmp_path / "p.json"), "--protocol"]
    argv += [f"split1={paths[3]}", f"split2={paths[3]}", f"split3={paths[1]}"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert caplog.messages.count("using the built-in sample: FAKE patches, not PanNuke data") == 1
    report = json.loads((tmp_path / "p.json").read_text())
    assert [report["splits"][s]["split"] for s in ("split1", "split2", "split3")] == ["fold3", "fold3", "fold1"]
    assert report["splits"]["split1"]["source"] == {"data_dir": None, "sample": True}
