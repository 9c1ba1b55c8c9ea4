"""`hovernext`: HoVer-NeXt's output folder per patch, <id>/pinst_pp.zip and <id>/class_inst.json.

digitalpathologybern/hover_next_inference@866f753, src/post_process.py `post_process_main`: `main.py --input
"<split>/*.png" --output_root OUT` writes OUT/<image name without extension>/ per image, holding
- `pinst_pp.zip`: `zarr.save` of the int32 instance map, shape (1, H, W) for one image ((H, W) for a slide). zarr 2
  turns the .zip path into a ZipStore (a zip of `.zarray` and Blosc-compressed chunks), read here by the zarr v2
  specification with numcodecs' codecs; zarr 3 makes a folder of that name (`zarr.json`, zstd chunks), read
  through zarr's own API (zarr >= 3). Both packages: `pip install zarr`.
- `class_inst.json`: {"<id>": [class, [image index, row, col]]} (src/post_process_utils.py `write`; a slide's
  centroid is [row, col]), classes 1..5 of src/constants.py `CLASS_LABELS_PANNUKE` (neoplastic, inflammatory,
  connective, dead, epithelial: our classes, never 0).
Each id of the map has its class; F1 takes the centroid HoVer-NeXt wrote (skimage's regionprops centroid,
the mean pixel position), as (x, y) = (col, row). HoVer-NeXt writes both files for every image ({} and a zero
map when it finds nothing): a missing folder or file is an error naming it.
"""

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
        raise PredictionError(f"{path}: a zarr 3 folder: reading it needs the zarr package: {INSTALL}") from None
    errors = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, struct.error)
    return zarr, errors + tuple(getattr(zarr.errors, name) for name in ("BaseZarrError",) if hasattr(zarr.errors, name))


def _codecs(path):
    """numcodecs (zarr's codecs: Blosc, Zstd, zlib...), with a one-line hint without it."""
    try:
        import numcodecs
    except ImportError:
        raise PredictionError(f"{path}: reading HoVer-NeXt's zarr maps needs numcodecs: {INSTALL}") from None
    return numcodecs


def _checked(path, shape, dtype, size):
    if dtype.kind not in "iu":
        raise PredictionError(f"{path}: dtype {dtype}, expected integer instance ids")
    if tuple(shape) not in ((1, *size), tuple(size)):
        expected = f"(1, {size[0]}, {size[1]})"
        raise PredictionError(f"{path}: shape {tuple(shape)}, expected {expected}: one patch's instance map")


def read_zarr2_zip(path, size):
    """The array of a zarr 2 ZipStore, read by the zarr storage specification v2 (zarr-specs, v2 array metadata):
    `.zarray` gives shape, chunks, dtype, order, fill_value, compressor and filters (numcodecs configurations);
    chunk (i, j, k) is the key "i.j.k" (dimension_separator), decompressed, then its filters undone in reverse
    order; a chunk zarr left out (all fill value) is the fill value. Read directly: zarr's own API costs 6 ms
    a patch, more than the rest of scoring it."""
    numcodecs = _codecs(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if ".zarray" not in names:
                raise PredictionError(f"{path}: no .zarray in the zip: not a zarr array")
            meta = json.loads(z.read(".zarray"))
            if meta.get("zarr_format") != 2:
                raise PredictionError(f"{path}: zarr_format {meta.get('zarr_format')!r} in .zarray, expected 2")
            shape, chunks, dtype = tuple(meta["shape"]), tuple(meta["chunks"]), np.dtype(meta["dtype"])
            _checked(path, shape, dtype, size)
            compressor = numcodecs.get_codec(meta["compressor"]) if meta.get("compressor") else None
            filters = [numcodecs.get_codec(f) for f in meta.get("filters") or []]
            separator, order = meta.get("dimension_separator") or ".", meta.get("order", "C")
            array = np.full(shape, meta.get("fill_value") or 0, dtype=dtype)
            grid = [-(-extent // chunk) for extent, chunk in zip(shape, chunks)]
            for index in np.ndindex(*grid):
                key = separator.join(str(i) for i in index)
                if key not in names:
                    continue
                data = z.read(key)
                if compressor is not None:
                    data = compressor.decode(data)
                for codec in reversed(filters):
                    data = codec.decode(data)
                chunk = np.frombuffer(data, dtype=dtype).reshape(chunks, order=order)
                region = tuple(slice(i * c, min((i + 1) * c, e)) for i, c, e in zip(index, chunks, shape))
                array[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
    except PredictionError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, RuntimeError, OSError, EOFError) as exc:
        raise PredictionError(f"{path}: damaged zarr array ({type(exc).__name__}: {exc})") from None
    return array


def read_zarr3_folder(path, size):
    """The array of a zarr 3 folder (zarr.json, codecs), through zarr's own API."""
    zarr, errors = _zarr(path)
    try:
        array = zarr.open_array(path, mode="r")
        _checked(path, array.shape, np.dtype(array.dtype), size)
        return np.asarray(array[...])
    except PredictionError:
        raise
    except errors as exc:
        raise PredictionError(f"{path}: no readable zarr array ({type(exc).__name__}: {exc})") from None


def read_map(path, size):
    """The (H, W) instance map of a pinst_pp.zip: zarr 2's zip, or the folder zarr 3 makes of that name."""
    if os.path.isdir(path):
        return read_zarr3_folder(path, size).reshape(size)
    if not zipfile.is_zipfile(path):
        raise PredictionError(f"{path}: not a zip file (zarr 2 writes pinst_pp.zip as a ZipStore)")
    return read_zarr2_zip(path, size).reshape(size)


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
    return prediction
