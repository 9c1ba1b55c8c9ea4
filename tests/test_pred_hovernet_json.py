"""--pred-format hovernet-json: HoVer-Net's json/<id>.json, written here as its post_proc and __save_json write it."""

import json
import os
import pickle

import numpy as np
import pytest
import scipy.io
from geo_reference import outlined, painted, post_proc_nucleus
from pannuke_fixtures import PART1_PATCHES, raw_fold
from prediction_reference import expected
from reference import reference_labels

import pannuke_imagemask as pim
from convert.formats.coco import image_id
from convert.predictions import base, open_prediction
from convert.predictions import hovernet_json as hovernet_json_reader
from convert.predictions.base import read_json

SIZE = (256, 256)
PATCHES = [(pim.patch_id(1, i), image_id(1, i)) for i in range(PART1_PATCHES)]


@pytest.fixture(scope="module")
def fold(kaggle_part1):
    _, masks, _ = raw_fold(kaggle_part1)
    return [reference_labels(np.asarray(masks[i])) for i in range(PART1_PATCHES)]


def hovernet_json(instance, nuclei, shift=5, typed=True, untyped=()):
    """{"mag", "nuc"} as infer/base.py __save_json writes post_proc's nuclei: ids id * shift + 2 as strings, bbox
    [[rmin, cmin], [rmax, cmax]], centroid [x, y], contour [[x, y], ...]; type label + 1, 0 for ids in untyped."""
    nuc, kept = {}, []
    for nucleus in nuclei:
        found = post_proc_nucleus(instance, nucleus["id"])
        if found is None:  # post_proc skips contours of fewer than 3 points
            continue
        contour, centroid = found
        rows, cols = np.nonzero(instance == nucleus["id"])
        kind = (0 if nucleus["id"] in untyped else nucleus["label"] + 1) if typed else None
        nuc[str(nucleus["id"] * shift + 2)] = {
            "bbox": [[int(rows.min()), int(cols.min())], [int(rows.max()) + 1, int(cols.max()) + 1]],
            "centroid": centroid,
            "contour": contour.tolist(),
            "type_prob": None if kind is None else 0.9,
            "type": kind,
        }
        kept.append((nucleus, contour, centroid, kind))
    return {"mag": None, "nuc": nuc}, kept


def reference(instance, kept):
    """(map 1..n, types, centroids) of the JSON's nuclei in id order, filled as drawn, larger first."""
    masks = [outlined(instance, n["id"], contour) for n, contour, _, _ in kept]
    truth = painted(masks) if masks else np.zeros(SIZE, dtype=np.int64)
    return truth, [kind for *_, kind in kept], np.array([c for _, _, c, _ in kept]).reshape(-1, 2)


def test_contours_are_filled_as_hovernet_drew_them_type_0_has_no_class(fold, tmp_path):
    out = tmp_path / "hovernet_out"
    (out / "json").mkdir(parents=True)
    (out / "overlay").mkdir()
    kept = {}
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        untyped = {nuclei[0]["id"]} if nuclei and position % 4 == 1 else set()
        document, kept[position] = hovernet_json(instance, nuclei, untyped=untyped)
        (out / "json" / f"{patch}.json").write_text(json.dumps(document))
    for path in (out, out / "json"):
        prediction = open_prediction(str(path), None, PATCHES, SIZE)
        assert (prediction.name, prediction.classified, prediction.notes) == ("hovernet-json", True, [])
        zero = 0
        for position, (_, instance, _) in enumerate(fold):
            truth, types, centroids = reference(instance, kept[position])
            channels, _, _ = expected(truth, types)
            got = prediction.read(position)
            np.testing.assert_array_equal(got.channels, channels)
            np.testing.assert_array_equal(got.centroids, centroids)  # HoVer-Net's centroid is the F1 point
            np.testing.assert_array_equal(got.types, types)
            zero += types.count(0)
        assert zero > 0  # type 0 nuclei: in no class channel, in the F1 list with type 0


def test_untyped_hovernet_is_class_agnostic_and_empty_nuc_has_no_nuclei(fold, tmp_path):
    emptied = next(p for p in range(1, PART1_PATCHES) if fold[p][2])  # a patch with nuclei, written without
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        document, _ = hovernet_json(instance, nuclei if position != emptied else [], typed=False)
        (tmp_path / f"{patch}.json").write_text(json.dumps(document))
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified) == ("hovernet-json", False)
    assert prediction.notes == ["hovernet-json: every type is null (HoVer-Net run without types): class-agnostic"]
    assert json.loads((tmp_path / f"{PATCHES[emptied][0]}.json").read_text()) == {"mag": None, "nuc": {}}
    got = prediction.read(emptied)
    assert not got.channels.any() and got.centroids.shape == (0, 2)
    _, instance, nuclei = fold[0]
    truth, _, _ = reference(instance, hovernet_json(instance, nuclei)[1])
    got = prediction.read(0)
    np.testing.assert_array_equal(got.channels[..., 0], truth)
    assert not got.channels[..., 1:].any() and (got.types == 0).all()


def test_the_mat_beside_the_json_wins_and_says_so(fold, tmp_path):
    out = tmp_path / "out"
    (out / "json").mkdir(parents=True)
    (out / "mat").mkdir()
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        (out / "json" / f"{patch}.json").write_text(json.dumps(hovernet_json(instance, nuclei)[0]))
        scipy.io.savemat(
            out / "mat" / f"{patch}.mat",
            {"inst_map": instance.astype(np.int32), "inst_type": np.array([n["label"] + 1 for n in nuclei])[:, None]},
        )
    for path, pred_format in ((out, None), (out, "hovernet-json"), (out / "json", "hovernet-json")):
        prediction = open_prediction(str(path), pred_format, PATCHES, SIZE)
        note = (
            "hovernet-json: mat/ stands beside json/: its .mat files are scored (exact pixels; the JSON contours "
            "lose holes, second pieces and nuclei of fewer than 3 contour points)"
        )
        assert prediction.name == "hovernet-mat" and prediction.notes == [note]
        _, instance, nuclei = fold[0]
        channels, _, types = expected(instance, [n["label"] + 1 for n in nuclei])
        got = prediction.read(0)
        np.testing.assert_array_equal(got.channels, channels)
        np.testing.assert_array_equal(got.types, types)


def test_damaged_hovernet_json_is_one_line(fold, tmp_path):
    _, instance, nuclei = fold[0]
    document, _ = hovernet_json(instance, nuclei)
    for patch, _ in PATCHES:
        (tmp_path / f"{patch}.json").write_text(json.dumps(document))
    path = tmp_path / f"{PATCHES[0][0]}.json"
    key = next(iter(document["nuc"]))
    first = document["nuc"][key]
    cases = [
        (json.dumps(document)[:50], "not complete JSON (Expecting ',' delimiter: line 1 column 51 (char 50))"),
        (json.dumps({"mag": None}), 'no "nuc" object (not a HoVer-Net JSON)'),
        (json.dumps({"nuc": {"x": first}}), "nucleus x: its id is not a whole number in 1..2147483647"),
        (
            json.dumps({"nuc": {key: {**first, "contour": [[250, 250], [260, 250], [260, 255]]}}}),
            f"nucleus {key}: contour leaves the 256x256 patch",
        ),
        (
            json.dumps({"nuc": {key: {**first, "contour": [[1.5, 2], [3, 4], [5, 5]]}}}),
            f"nucleus {key}: contour points are not whole pixels",
        ),
        (json.dumps({"nuc": {key: {**first, "type": 9}}}), f"nucleus {key}: type 9 is not one of 0..5 or null"),
        (
            json.dumps({"nuc": {key: {**first, "centroid": [float("nan"), 3]}}}),
            f"nucleus {key}: centroid has non-finite values (NaN or inf)",
        ),
        (json.dumps({"nuc": {key: {**first, "type": None}}}), f"{path}: type null, but {PATCHES[1][0]}.json has types"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            open_prediction(str(tmp_path), "hovernet-json", PATCHES, SIZE)
        assert str(info.value) == (message if message.startswith(str(path)) else f"{path}: {message}")
    path.unlink()
    with pytest.raises(FileNotFoundError) as info:
        open_prediction(str(tmp_path), "hovernet-json", PATCHES, SIZE)
    assert str(info.value) == f"{tmp_path}: 1 prediction(s) missing, the first {PATCHES[0][0]}.json"


def test_each_file_is_parsed_once_and_one_changed_after_opening_is_read_again(fold, tmp_path, monkeypatch):
    """The opening check keeps what it parsed for the reads (not for workers: not pickled), up to
    KEPT_SOURCE_BYTES of source; a file whose size or modification time changed since is parsed again."""
    for position, (patch, _) in enumerate(PATCHES):
        _, instance, nuclei = fold[position]
        (tmp_path / f"{patch}.json").write_text(json.dumps(hovernet_json(instance, nuclei)[0]))
    parsed = []
    monkeypatch.setattr(hovernet_json_reader, "read_json", lambda path: parsed.append(path) or read_json(path))
    prediction = open_prediction(str(tmp_path), "hovernet-json", PATCHES, SIZE)
    assert len(parsed) == len(PATCHES)
    fresh = pickle.loads(pickle.dumps(prediction))  # as a worker gets it: nothing kept
    assert fresh._cache == {}
    for position in range(len(PATCHES)):
        got, again = prediction.read(position), fresh.read(position)
        for field in got._fields:
            np.testing.assert_array_equal(getattr(got, field), getattr(again, field))
    assert len(parsed) == 2 * len(PATCHES)  # the reads of the kept copy parsed nothing
    # Nothing kept beyond the budget: every read parses, with the same result.
    monkeypatch.setattr(base, "KEPT_SOURCE_BYTES", 0)
    bounded = open_prediction(str(tmp_path), "hovernet-json", PATCHES, SIZE)
    assert bounded._cache.get("kept", {}) == {}
    np.testing.assert_array_equal(bounded.read(0).channels, prediction.read(0).channels)
    monkeypatch.undo()
    # Patch 0 rewritten after opening, without its first nucleus: the read sees the file as it is now.
    prediction = open_prediction(str(tmp_path), "hovernet-json", PATCHES, SIZE)
    _, instance, nuclei = fold[0]
    document, kept = hovernet_json(instance, nuclei[1:])
    path = tmp_path / f"{PATCHES[0][0]}.json"
    stamp = path.stat().st_mtime_ns
    path.write_text(json.dumps(document))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a later time even where the clock is coarse
    truth, types, centroids = reference(instance, kept)
    got = prediction.read(0)
    np.testing.assert_array_equal(got.channels, expected(truth, types)[0])
    np.testing.assert_array_equal(got.centroids, centroids)
