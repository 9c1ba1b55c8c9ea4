"""evaluate --pred-format hovernext: HoVer-NeXt's <id>/pinst_pp.zip and <id>/class_inst.json, written with the
real zarr package as its src/post_process.py `post_process_main` writes them (HoVer-NeXt is not on PyPI),
read back against an independent conversion."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import zarr  # the test extra installs it
from array_predictions import SIZE, fold1_patches, masks_of, predicted, renumbered, score
from prediction_reference import expected

from convert.predictions import open_prediction

PATCHES = fold1_patches()


@pytest.fixture(scope="module")
def preds(three_folds):
    return predicted(three_folds)


def save_zarr2_zip(path, array):
    """HoVer-NeXt under zarr 2: `zarr.save("…/pinst_pp.zip", pinst_out)` makes a ZipStore and saves with zarr 2's
    default compressor, Blosc lz4 level 5 with byte shuffle (zarr 3 writes the same file with zarr_format=2)."""
    from numcodecs import Blosc

    store = zarr.storage.ZipStore(str(path), mode="w")
    zarr.save_array(store, array, zarr_format=2, compressor=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE))
    store.close()


def save_zarr2_zip_chunked(path, array):
    """A zarr 2 zip in chunks of 100 x 100, the last ones cut by the edge, no compressor: what other zarr 2
    writers may leave."""
    store = zarr.storage.ZipStore(str(path), mode="w")
    made = zarr.create_array(store, shape=array.shape, chunks=(1, 100, 100), dtype=array.dtype, zarr_format=2,
                             compressors=None)  # fmt: skip
    made[...] = array
    store.close()


def save_zarr3(path, array):
    """HoVer-NeXt under zarr 3: the same call makes a folder named pinst_pp.zip (a LocalStore)."""
    zarr.save(str(path), array)


def class_inst(instance, kind):
    """class_inst.json of post_process_utils.py `write`: {id: [class, [image index, row, col]]}, the centroid the
    mean pixel position (regionprops'), computed here with np.mean."""
    document = {}
    for value in sorted(set(instance.ravel().tolist()) - {0}):
        rows, cols = np.nonzero(instance == value)
        document[str(value)] = [int(kind[rows[0], cols[0]]), [0, float(rows.mean()), float(cols.mean())]]
    return document


def write_output(root, preds, save=save_zarr2_zip):
    for (patch, _), (instance, kind) in zip(PATCHES, preds):
        folder = root / patch
        folder.mkdir(parents=True)
        save(folder / "pinst_pp.zip", instance.astype(np.int32)[np.newaxis])  # (1, H, W): one image
        (folder / "class_inst.json").write_text(json.dumps(class_inst(instance, kind)))


def save_zarr3_sharded(path, array):
    """A zarr 3 folder of sharded chunks (a codec read through zarr's own API)."""
    made = zarr.create_array(str(path), shape=array.shape, chunks=(1, 64, 64), shards=(1, 128, 256), dtype=array.dtype)
    made[...] = array


@pytest.mark.parametrize("save", [save_zarr2_zip, save_zarr2_zip_chunked, save_zarr3, save_zarr3_sharded])
def test_the_map_and_classes_are_read_with_hovernexts_centroids(preds, tmp_path, save):
    write_output(tmp_path / "out", preds, save)
    prediction = open_prediction(str(tmp_path / "out"), None, PATCHES, SIZE)
    assert (prediction.name, prediction.classified) == ("hovernext", True)
    is_zip = zipfile.is_zipfile(tmp_path / "out" / PATCHES[0][0] / "pinst_pp.zip")
    assert is_zip == save.__name__.startswith("save_zarr2")
    if save is save_zarr2_zip:  # zarr leaves out a chunk that is all fill value: a patch without nuclei has none
        empty = [p for p, (instance, _) in zip(PATCHES, preds) if not instance.any()]
        with zipfile.ZipFile(tmp_path / "out" / empty[0][0] / "pinst_pp.zip") as z:
            assert "0.0.0" not in z.namelist()
    for position, (instance, kind) in enumerate(preds):
        numbered, ids = renumbered(instance)
        types = [int(kind[instance == value][0]) for value in ids]
        channels, centroids, types = expected(numbered, types)
        got = prediction.read(position)
        np.testing.assert_array_equal(got.channels, channels)
        np.testing.assert_array_equal(got.types, types)
        np.testing.assert_allclose(got.centroids, centroids, rtol=0, atol=1e-9)


def test_scoring_hovernext_output_gives_the_numbers_of_the_same_nuclei_as_class_channels(three_folds, preds, tmp_path):
    write_output(tmp_path / "out", preds)
    np.save(tmp_path / "masks.npy", masks_of(preds))
    hovernext, rows, pred = score(three_folds, tmp_path / "out", tmp_path)
    reference, reference_rows, _ = score(three_folds, tmp_path / "masks.npy", tmp_path)
    assert pred == {"path": str(tmp_path / "out"), "layout": "hovernext", "classified": True}
    assert hovernext == reference and rows == reference_rows
    assert 0 < hovernext["mPQ"] < 1


def _error(path, message, pred_format=None):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        open_prediction(str(path), pred_format, PATCHES, SIZE).read(0)
    assert str(info.value) == message


def test_damaged_hovernext_output_is_one_line(preds, tmp_path):
    root = tmp_path / "out"
    write_output(root, preds[:1] * len(PATCHES))
    folder = root / PATCHES[0][0]
    zip_path, json_path = folder / "pinst_pp.zip", folder / "class_inst.json"
    good = json.loads(json_path.read_text())
    first = min(good, key=int)

    json_path.write_text(json.dumps({**good, "99991": [2, [0, 5.0, 5.0]]}))
    _error(root, f"{json_path}: nucleus 99991 is not in pinst_pp.zip (1 such)")
    json_path.write_text(json.dumps({k: v for k, v in good.items() if k != first}))
    _error(root, f"{zip_path}: instance {first} of the map has no type")
    json_path.write_text(json.dumps(good)[:50])
    assert str(_raised(root)).startswith(f"{json_path}: not complete JSON (")
    json_path.write_text(json.dumps({**good, first: [2]}))
    _error(root, f"{json_path}: entry '{first}' is [2], expected [class, [image, row, col]]")
    json_path.write_text(json.dumps({**good, first: [7, good[first][1]]}))
    _error(root, f"{zip_path}: nucleus type 7 is not in 0..5")
    json_path.write_text(json.dumps(good))

    with zipfile.ZipFile(zip_path) as z:
        chunks = {name: z.read(name) for name in z.namelist() if not name.startswith(".")}
    with zipfile.ZipFile(zip_path, "w") as z:  # the chunks without .zarray: no array
        for name, data in chunks.items():
            z.writestr(name, data)
    _error(root, f"{zip_path}: no .zarray in the zip: not a zarr array")
    save_zarr2_zip(zip_path, np.zeros((1, *SIZE), np.int32) + 1)
    with zipfile.ZipFile(zip_path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(zip_path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data[: len(data) // 2] if name == "0.0.0" else data)
    _error(root, f"{zip_path}: damaged zarr array (RuntimeError: error during blosc decompression: -1)")
    save_zarr2_zip(zip_path, np.zeros((1, 128, 256), np.int32))
    _error(root, f"{zip_path}: shape (1, 128, 256), expected (1, 256, 256): one patch's instance map")
    zip_path.write_bytes(b"garbage")
    _error(root, f"{zip_path}: not a zip file (zarr 2 writes pinst_pp.zip as a ZipStore)")
    os.remove(zip_path)
    _error(root, f"{zip_path}: missing (HoVer-NeXt writes it for every image it ran on)")
    save_zarr3(zip_path, np.zeros((2, *SIZE), np.int32))
    _error(root, f"{zip_path}: shape (2, 256, 256), expected (1, 256, 256): one patch's instance map")
    shutil.rmtree(zip_path)
    save_zarr3(zip_path, np.zeros((1, *SIZE), np.float32))
    _error(root, f"{zip_path}: dtype float32, expected integer instance ids")
    shutil.rmtree(zip_path)
    save_zarr3(zip_path, np.ones((1, *SIZE), np.int32))
    chunk = next(p for p in zip_path.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert str(_raised(root)).startswith(f"{zip_path}: damaged zarr array (RuntimeError: ")
    shutil.rmtree(zip_path)
    zip_path.mkdir()  # an empty zarr 3 folder
    assert str(_raised(root)).startswith(f"{zip_path}: no readable zarr array (")
    shutil.rmtree(zip_path)
    save_zarr2_zip(zip_path, preds[0][0].astype(np.int32)[np.newaxis])

    shutil.copytree(folder, root / "fold3_00001")
    _error(root, f"{root}: 1 output folder(s) not in the split, the first fold3_00001")
    shutil.rmtree(root / "fold3_00001")
    shutil.rmtree(root / PATCHES[5][0])
    _error(root, f"{root / PATCHES[5][0] / 'pinst_pp.zip'}: missing (HoVer-NeXt writes it for every image it ran on)")
    _error(zip_path, f"{zip_path}: the hovernext layout is HoVer-NeXt's output folder, not a file", "hovernext")
    _error(
        folder,
        f"{folder}: one HoVer-NeXt output folder (of an .npy stack?); evaluate reads its output of the split's "
        'PNGs, one folder per patch: main.py --input "<split>/*.png" --output_root OUT, then --pred OUT',
    )  # recognised as HoVer-NeXt's, then refused


def test_without_zarr_the_line_says_how_to_install_it(preds, tmp_path, monkeypatch):
    import sys

    write_output(tmp_path / "zip", preds[:1] * len(PATCHES))
    write_output(tmp_path / "folder", preds[:1] * len(PATCHES), save_zarr3)
    write_output(tmp_path / "sharded", preds[:1] * len(PATCHES), save_zarr3_sharded)
    for module in ("zarr", "numcodecs"):
        monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    for folder in ("zip", "folder"):
        path = tmp_path / folder / PATCHES[0][0] / "pinst_pp.zip"
        _error(tmp_path / folder, f"{path}: reading HoVer-NeXt's zarr maps needs numcodecs: pip install zarr")
    path = tmp_path / "sharded" / PATCHES[0][0] / "pinst_pp.zip"
    _error(tmp_path / "sharded", f"{path}: a zarr 3 folder: reading it needs the zarr package: pip install zarr")


def _raised(path):
    with pytest.raises(ValueError) as info:
        open_prediction(str(path), None, PATCHES, SIZE).read(0)
    return info.value
