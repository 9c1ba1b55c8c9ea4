"""`hovernext`: HoVer-NeXt's output folder per patch, <id>/pinst_pp.zip and <id>/class_inst.json.

digitalpathologybern/hover_next_inference@866f753, src/post_process.py `post_process_main`: `main.py --input
"<split>/*.png" --output_root OUT` writes OUT/<image name without extension>/ per image, holding
- `pinst_pp.zip`: `zarr.save` of the int32 instance map, shape (1, H, W) for one image ((H, W) for a slide). zarr 2
  turns the .zip path into a ZipStore (a zip of `.zarray` and Blosc-compressed chunks); zarr 3 makes a folder of
  that name (`zarr.json`, zstd chunks). Both are read through zarr's own API (zarr 3 reads both; zarr 2 only the
  zip): `pip install zarr`.
- `class_inst.json`: {"<id>": [class, [image index, row, col]]} (src/post_process_utils.py `write`; a slide's
  centroid is [row, col]), classes 1..5 of src/constants.py `CLASS_LABELS_PANNUKE` (neoplastic, inflammatory,
  connective, dead, epithelial: our classes, never 0).
Each id of the map has its class; F1 takes the centroid HoVer-NeXt wrote (skimage's regionprops centroid,
the mean pixel position), as (x, y) = (col, row). HoVer-NeXt writes both files for every image ({} and a zero
map when it finds nothing): a missing folder or file is an error naming it.
"""

import contextlib
import json
import os
import struct
import zipfile

import numpy as np

from .base import Prediction, PredictionError, from_instances, listing

NAME = "hovernext"
MAP, CLASSES = "pinst_pp.zip", "class_inst.json"
INSTALL = "pip install zarr"


def recognise(path):
    """A folder of HoVer-NeXt output folders: some <name>/pinst_pp.zip or <name>/class_inst.json."""
    if not os.path.isdir(path):
        return False
    return any(
        os.path.exists(os.path.join(path, name, MAP)) or os.path.exists(os.path.join(path, name, CLASSES))
        for name in listing(path)
        if os.path.isdir(os.path.join(path, name))
    )


def _zarr(path):
    """(zarr, what it raises for a store without its array or with damaged chunks); a one-line hint without it."""
    try:
        import zarr
    except ImportError:
        raise PredictionError(f"{path}: reading HoVer-NeXt's zarr maps needs the zarr package: {INSTALL}") from None
    errors = (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, struct.error)
    return zarr, errors + tuple(getattr(zarr.errors, name) for name in ("BaseZarrError",) if hasattr(zarr.errors, name))


@contextlib.contextmanager
def open_map(path, size):
    """The zarr array of a pinst_pp.zip (a zarr 2 zip or a zarr 3 folder), shape and dtype checked, then closed."""
    zarr, errors = _zarr(path)
    store = None
    try:
        store = zarr.storage.ZipStore(path, mode="r") if os.path.isfile(path) else path
        array = zarr.open_array(store, mode="r")
        shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    except errors as exc:
        _close(store)
        raise PredictionError(f"{path}: no readable zarr array ({type(exc).__name__}: {exc})") from None
    try:
        if dtype.kind not in "iu":
            raise PredictionError(f"{path}: dtype {dtype}, expected integer instance ids")
        if shape not in ((1, *size), tuple(size)):
            raise PredictionError(f"{path}: shape {shape}, expected (1, {size[0]}, {size[1]}): one patch's instance map")
        yield array, errors
    finally:
        _close(store)


def _close(store):
    if hasattr(store, "close"):  # a ZipStore holds the zip open
        store.close()


def read_map(path, size):
    """The (H, W) instance map of a pinst_pp.zip."""
    with open_map(path, size) as (array, errors):
        try:
            return np.asarray(array[...]).reshape(size)
        except errors as exc:
            raise PredictionError(f"{path}: damaged zarr chunks ({type(exc).__name__}: {exc})") from None


def read_classes(path):
    """(ids, classes, centroids (x, y)) of a class_inst.json, each entry checked."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PredictionError(f"{path}: not complete JSON ({exc})") from None
    if not isinstance(document, dict):
        raise PredictionError(f"{path}: holds a {type(document).__name__}, expected an object of id: [class, centroid]")
    ids, classes, centroids = [], [], []
    for key, value in document.items():
        try:
            kind, centroid = value
            point = [float(c) for c in centroid][-2:]
            if len(centroid) not in (2, 3) or not isinstance(kind, int) or isinstance(kind, bool) or not key.isdigit():
                raise ValueError
        except (ValueError, TypeError):
            raise PredictionError(
                f"{path}: entry {key!r} is {json.dumps(value)[:60]}, expected [class, [image, row, col]]"
            ) from None
        ids.append(int(key))
        classes.append(kind)
        centroids.append(point[::-1])  # (row, col) -> (x, y)
    return np.array(ids, dtype=np.int64), np.array(classes, dtype=np.int64), np.array(centroids).reshape(-1, 2)


class HovernextPrediction(Prediction):
    name = NAME

    def read(self, position):
        folder = os.path.join(self.path, self.patch(position))
        map_path, classes_path = os.path.join(folder, MAP), os.path.join(folder, CLASSES)
        instance = read_map(map_path, self.size)
        ids, classes, centroids = read_classes(classes_path)
        absent = ~np.isin(ids, instance)
        if absent.any():
            raise PredictionError(f"{classes_path}: nucleus {ids[absent][0]} is not in {MAP} ({absent.sum()} such)")
        return from_instances(instance, ids, classes, centroids, where=map_path)


def open_layout(path, patches, size, **options):
    prediction = HovernextPrediction(path, patches, size)
    if not os.path.isdir(path):
        raise PredictionError(f"{path}: the hovernext layout is HoVer-NeXt's output folder, not a file")
    ids = [patch for patch, _ in prediction.patches]
    outputs = {
        name
        for name in listing(path)
        if os.path.exists(os.path.join(path, name, MAP)) or os.path.exists(os.path.join(path, name, CLASSES))
    }
    foreign = sorted(outputs - set(ids))
    if foreign:
        raise PredictionError(f"{path}: {len(foreign)} output folder(s) not in the split, the first {foreign[0]}")
    for patch in ids:
        for name in (MAP, CLASSES):
            if not os.path.exists(os.path.join(path, patch, name)):
                raise FileNotFoundError(
                    f"{os.path.join(path, patch, name)}: missing (HoVer-NeXt writes it for every image it ran on)"
                )
        with open_map(os.path.join(path, patch, MAP), prediction.size):
            pass
    return prediction
