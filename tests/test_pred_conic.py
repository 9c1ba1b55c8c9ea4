"""evaluate --pred-format conic: one (N, H, W, 2) labels.npy, read back against an independent conversion."""

import numpy as np
import pytest
from array_predictions import SIZE, fold1_patches, masks_of, predicted, renumbered, score
from prediction_reference import expected

from convert.predictions import open_prediction

PATCHES = fold1_patches()


@pytest.fixture(scope="module")
def preds(three_folds):
    return predicted(three_folds)


def _labels(preds, dtype):
    return np.stack([np.stack([instance, kind], axis=-1) for instance, kind in preds]).astype(dtype)


def error(path, message, pred_format=None):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        open_prediction(str(path), pred_format, PATCHES, SIZE).read(0)
    assert str(info.value) == message


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])  # CoNIC's, our export's, HoVer-NeXt's
def test_each_nucleus_of_the_labels_is_read_with_its_class(preds, tmp_path, dtype):
    path = tmp_path / "labels.npy"
    np.save(path, _labels(preds, dtype))
    prediction = open_prediction(str(path), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified, prediction.notes) == ("conic", True, [])
    for position, (instance, kind) in enumerate(preds):
        numbered, ids = renumbered(instance)
        types = [int(kind[instance == value][0]) for value in ids]  # one class per nucleus here
        channels, centroids, types = expected(numbered, types)
        got = prediction.read(position)
        np.testing.assert_array_equal(got.channels, channels)
        np.testing.assert_array_equal(got.types, types)
        np.testing.assert_allclose(got.centroids, centroids, rtol=0, atol=1e-9)


def test_a_nucleus_takes_the_class_most_of_its_pixels_have_ties_to_the_lower(tmp_path):
    labels = np.zeros((len(PATCHES), *SIZE, 2), dtype=np.int32)
    labels[0, 0, :4, 0] = 5  # classes 3, 3, 2, 2: a tie, the lower class
    labels[0, 0, :4, 1] = [3, 3, 2, 2]
    labels[0, 2, :3, 0] = 9  # classes 0, 0, 4: mostly background: a nucleus without a class
    labels[0, 2, :3, 1] = [0, 0, 4]
    labels[0, 4, :3, 0] = 2  # classes 1, 5, 5
    labels[0, 4, :3, 1] = [1, 5, 5]
    np.save(tmp_path / "labels.npy", labels)
    got = open_prediction(str(tmp_path / "labels.npy"), None, PATCHES, SIZE).read(0)
    np.testing.assert_array_equal(got.types, [5, 2, 0])  # ids 2, 5, 9 in increasing order
    assert got.channels[4, 0, 4] == 1 and got.channels[0, 0, 1] == 2 and not got.channels[2].any()
    np.testing.assert_array_equal(got.centroids, [[1, 4], [1.5, 0], [1, 2]])


def test_scoring_the_labels_gives_the_numbers_of_the_same_nuclei_as_class_channels(three_folds, preds, tmp_path):
    np.save(tmp_path / "labels.npy", _labels(preds, np.uint16))
    np.save(tmp_path / "masks.npy", masks_of(preds))
    conic, conic_rows, pred = score(three_folds, tmp_path / "labels.npy", tmp_path)
    masks, masks_rows, _ = score(three_folds, tmp_path / "masks.npy", tmp_path)
    assert pred == {"path": str(tmp_path / "labels.npy"), "layout": "conic", "classified": True}
    assert conic == masks and conic_rows == masks_rows
    assert 0 < conic["mPQ"] < 1 and 0 < conic["detection"]["f1"] < 1


def test_a_masks_npy_is_still_the_masks_layout(preds, tmp_path):
    np.save(tmp_path / "masks.npy", masks_of(preds))
    assert open_prediction(str(tmp_path / "masks.npy"), None, PATCHES, SIZE).name == "masks"


def test_damaged_labels_are_one_line(tmp_path):
    path = tmp_path / "labels.npy"
    n = len(PATCHES)
    for array, message in [
        (np.zeros((n - 1, *SIZE, 2), np.int32), f"{n - 1} predictions, the split has {n} patches"),
        (np.zeros((n, 128, 256, 2), np.int32), "shape (24, 128, 256, 2), expected (N, 256, 256, 2): instance ids, then classes 0..5"),
        (np.zeros((n, *SIZE), np.int32), "shape (24, 256, 256), expected (N, 256, 256, 2): instance ids, then classes 0..5"),
        (np.zeros((n, *SIZE, 2), np.float32), "dtype float32, expected integers (instance ids and classes)"),
    ]:
        np.save(path, array)
        error(path, f"{path}: {message}", "conic")
    np.save(path, np.zeros((n, *SIZE, 3), np.int32))  # three channels: not a CoNIC array, so the masks layout
    error(path, f"{path}: shape (24, 256, 256, 3), expected (N, 256, 256, C) with C >= 5")
    labels = np.zeros((n, *SIZE, 2), np.int16)
    labels[0, 3, 3] = [-32768, 1]  # csbdeep-style wrapped ids
    np.save(path, labels)
    error(path, f"{path}: fold1_00000: instance channel has negative values (min -32768)")
    labels[0, 3, 3] = [4, 6]
    np.save(path, labels)
    error(path, f"{path}: fold1_00000: type channel has values above 5 (max 6)")
    np.save(path, np.zeros((n, *SIZE, 2), np.int32))
    path.write_bytes(path.read_bytes()[:1000])
    error(path, f"{path}: truncated: 1000 bytes, header (24, 256, 256, 2) int32 needs 12583040", "conic")
    np.save(path, np.array([{"a": 1}] * 2, dtype=object), allow_pickle=True)
    error(path, f"{path}: holds Python objects (dtype object); refusing to unpickle", "conic")
