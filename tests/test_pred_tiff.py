"""evaluate --pred-format tiff: label TIFFs as InstanSeg, StarDist, csbdeep and cellpose save them (written here
with tifffile as each writer calls it), read back against an independent conversion."""

import os

import numpy as np
import pytest
import tifffile
from array_predictions import SIZE, agnostic_part, fold1_patches, predicted, renumbered, score
from prediction_reference import expected

from convert.predictions import open_prediction

PATCHES = fold1_patches()
N = len(PATCHES)


@pytest.fixture(scope="module")
def preds(three_folds):
    return predicted(three_folds)


def _instanseg(path, labels):
    """InstanSeg.save_output: skimage.io.imsave of labels.squeeze().astype(int32); (2, H, W) for nuclei and cells."""
    tifffile.imwrite(path, labels.astype(np.int32))


def _stardist_cli(path, labels):
    """stardist-predict2d (scripts/predict2d.py): tifffile, zlib, int32."""
    tifffile.imwrite(path, labels.astype(np.int32), compression="zlib")


def _csbdeep(path, labels):
    """csbdeep.io.save_tiff_imagej_compatible(path, labels, axes="YX"): int32 stored as int16, ImageJ TIFF."""
    tifffile.imwrite(path, labels.astype(np.int16), imagej=True, metadata={"axes": "YX"})


def _cellpose(path, labels):
    """cellpose io.save_masks with --save_tif: uint16 (uint32 past 65,535 masks)."""
    tifffile.imwrite(path, labels.astype(np.uint16))


def _read_all(prediction, instances):
    for position, instance in enumerate(instances):
        numbered, ids = renumbered(instance)
        channels, centroids, _ = expected(numbered, [1] * len(ids))
        got = prediction.read(position)
        np.testing.assert_array_equal(got.channels, channels)
        np.testing.assert_array_equal(got.types, [0] * len(ids))
        np.testing.assert_allclose(got.centroids, centroids, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "ending, write, cells",
    [
        ("_instanseg_prediction.tiff", _instanseg, False),
        ("_instanseg_prediction.tiff", _instanseg, True),
        (".stardist.tif", _stardist_cli, False),
        (".tif", _csbdeep, False),
        (".tiff", _instanseg, False),
        ("_cp_masks.tif", _cellpose, False),
    ],
)
def test_each_writers_labels_are_read_class_agnostic(preds, tmp_path, ending, write, cells):
    folder = tmp_path / "out"
    folder.mkdir()
    instances = [instance for instance, _ in preds]
    for (patch, _), instance in zip(PATCHES, instances):
        (folder / f"{patch}.png").write_bytes(b"the image the model ran on, beside its output")
        labels = np.stack([instance, np.where(instance > 0, 40000, 0)]) if cells else instance  # channel 1: cells
        write(folder / f"{patch}{ending}", labels)
        if ending == "_instanseg_prediction.tiff":
            overlay = folder / f"{patch}_instanseg_prediction_overlay.tiff"  # its drawing, beside: not read
            tifffile.imwrite(overlay, np.zeros((*SIZE, 3), np.uint8), photometric="rgb")
    prediction = open_prediction(str(folder), None if ending != ".tiff" else "tiff", PATCHES, SIZE)
    assert (prediction.name, prediction.classified, prediction.ending) == ("tiff", False, ending)
    _read_all(prediction, instances)


def test_a_missing_cp_masks_tif_has_no_nuclei_a_missing_stardist_file_is_an_error(preds, tmp_path):
    instances = [instance for instance, _ in preds]
    for (patch, _), instance in zip(PATCHES, instances):
        (tmp_path / f"{patch}_seg.npy").write_bytes(b"cellpose's pickle: never read")
        if patch != PATCHES[3][0]:
            _cellpose(tmp_path / f"{patch}_cp_masks.tif", instance)
    prediction = open_prediction(str(tmp_path), None, PATCHES, SIZE)
    assert prediction.notes == ["tiff: a patch without _cp_masks.tif has no nuclei (cellpose writes none then)"]
    _read_all(prediction, [np.zeros(SIZE, np.int64) if k == 3 else m for k, m in enumerate(instances)])
    assert instances[3].any()
    stardist = tmp_path / "stardist"
    stardist.mkdir()
    for patch, _ in PATCHES[1:]:
        _stardist_cli(stardist / f"{patch}.stardist.tif", instances[0])
    with pytest.raises(FileNotFoundError) as info:
        open_prediction(str(stardist), None, PATCHES, SIZE)
    assert str(info.value) == f"{stardist}: 1 StarDist file(s) missing, the first {PATCHES[0][0]}.stardist.tif"


def test_scoring_label_tiffs_gives_the_binary_numbers_of_the_same_nuclei_as_one_channel(three_folds, preds, tmp_path):
    folder = tmp_path / "stardist"
    folder.mkdir()
    masks = np.zeros((N, *SIZE, 5), dtype=np.int64)
    for k, ((patch, _), (instance, _)) in enumerate(zip(PATCHES, preds)):
        _stardist_cli(folder / f"{patch}.stardist.tif", instance)
        masks[k, ..., 0] = instance
    np.save(tmp_path / "masks.npy", masks)
    tiff, tiff_rows, pred = score(three_folds, folder, tmp_path)
    reference, reference_rows, _ = score(three_folds, tmp_path / "masks.npy", tmp_path)
    assert pred == {"path": str(folder), "layout": "tiff", "classified": False}
    assert agnostic_part(tiff, tiff_rows) == agnostic_part(reference, reference_rows)
    assert tiff["mPQ"] is None and tiff["detection"]["type_accuracy"] is None
    assert 0 < tiff["bPQ"] < 1


def _error(path, message, pred_format=None):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        open_prediction(str(path), pred_format, PATCHES, SIZE).read(0)
    assert str(info.value) == message


def test_damaged_label_tiffs_are_one_line(tmp_path):
    first = tmp_path / f"{PATCHES[0][0]}.stardist.tif"
    for patch, _ in PATCHES:
        _stardist_cli(tmp_path / f"{patch}.stardist.tif", np.zeros(SIZE, np.int32))
    wrapped = np.zeros(SIZE, np.int32)
    wrapped[5:9, 5:9] = 32768 + 4  # the 32773rd nucleus: csbdeep's int16 makes it -32764
    _csbdeep(first, wrapped)
    _error(
        tmp_path,
        f"{first}: negative ids (min -32764): an int16 TIFF whose ids from 32768 wrapped (csbdeep's "
        "save_tiff_imagej_compatible stores int32 labels as int16): save the labels with tifffile.imwrite, which "
        "keeps int32",
    )
    for labels, message in [
        (np.zeros(SIZE, np.float32), "dtype float32, expected integer labels (0 background, 1.. the nuclei)"),
        (np.zeros((128, 256), np.int32), ("shape (128, 256), expected a 256x256 label image (256, 256) or "
         "InstanSeg's nuclei and cells (2, 256, 256)")),
        (np.zeros((*SIZE, 3), np.uint8), ("shape (256, 256, 3), expected a 256x256 label image (256, 256) or "
         "InstanSeg's nuclei and cells (2, 256, 256)")),
    ]:  # fmt: skip
        tifffile.imwrite(first, labels, photometric="rgb" if labels.ndim == 3 else None)
        _error(tmp_path, f"{first}: {message}")
    first.write_bytes(b"II*\x00garbage")
    assert str(_raised(tmp_path)).startswith(f"{first}: not a readable TIFF (")
    first.write_bytes(b"")
    assert str(_raised(tmp_path)).startswith(f"{first}: not a readable TIFF (")
    _stardist_cli(first, np.zeros(SIZE, np.int32))
    _stardist_cli(tmp_path / "fold3_00001.stardist.tif", np.zeros(SIZE, np.int32))
    _error(tmp_path, f"{tmp_path}: 1 StarDist file(s) not in the split, the first fold3_00001.stardist.tif")
    os.remove(tmp_path / "fold3_00001.stardist.tif")
    _instanseg(tmp_path / f"{PATCHES[1][0]}_instanseg_prediction.tiff", np.zeros(SIZE, np.int32))
    _error(
        tmp_path,
        f"{tmp_path}: label TIFFs of InstanSeg (<id>_instanseg_prediction.tiff) and StarDist (<id>.stardist.tif); "
        "keep one writer's files in the folder",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    _error(
        empty,
        f"{empty}: no label TIFF of the split's patches (<id>.tif, <id>.tiff, <id>_instanseg_prediction.tiff, "
        "<id>.stardist.tif or <id>_cp_masks.tif)",
        "tiff",
    )
    _error(first, f"{first}: the tiff layout is a folder of <id>.tif label images, not a file", "tiff")


def _raised(path):
    with pytest.raises(ValueError) as info:
        open_prediction(str(path), None, PATCHES, SIZE).read(0)
    return info.value
