"""`hovernext`: HoVer-NeXt's output folder per patch, <id>/pinst_pp.zip and <id>/class_inst.json.

digitalpathologybern/hover_next_inference@866f753, src/post_process.py `post_process_main`: `main.py --input
"<split>/*.png" --output_root OUT` writes OUT/<image name without extension>/ per image, holding
- `pinst_pp.zip`: `zarr.save` of the int32 instance map, shape (1, H, W) for one image ((H, W) for a slide). zarr 2
  turns the .zip path into a ZipStore (a zip of `.zarray` and Blosc-compressed chunks), read here by the zarr v2
  specification with numcodecs' codecs; zarr 3 makes a folder of that name (`zarr.json`, zstd chunks), read by the
  v3 specification for its default codecs, through zarr's own API (zarr >= 3) for others. `pip install zarr`
  brings both packages.
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
    """A folder of HoVer-NeXt output folders (some <name>/pinst_pp.zip or <name>/class_inst.json), or one."""
    if not os.path.isdir(path):
        return False
    return os.path.exists(os.path.join(path, MAP)) or any(
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


def _assemble(shape, chunks, dtype, fill, chunk_of):
    """The array of a regular chunk grid: chunk_of(index) gives a chunk's values (chunks-shaped, edge chunks
    padded as zarr writes them) or None for a chunk zarr left out, which holds the fill value."""
    array = np.full(shape, fill, dtype=dtype)
    for index in np.ndindex(*[-(-extent // chunk) for extent, chunk in zip(shape, chunks)]):
        values = chunk_of(index)
        if values is not None:
            region = tuple(slice(i * c, min((i + 1) * c, e)) for i, c, e in zip(index, chunks, shape))
            array[region] = values[tuple(slice(0, r.stop - r.start) for r in region)]
    return array


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

            def chunk_of(index):
                key = separator.join(str(i) for i in index)
                if key not in names:
                    return None
                data = z.read(key)
                if compressor is not None:
                    data = compressor.decode(data)
                for codec in reversed(filters):
                    data = codec.decode(data)
                return np.frombuffer(data, dtype=dtype).reshape(chunks, order=order)

            return _assemble(shape, chunks, dtype, meta.get("fill_value") or 0, chunk_of)
    except PredictionError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, RuntimeError, OSError, EOFError) as exc:
        raise PredictionError(f"{path}: damaged zarr array ({type(exc).__name__}: {exc})") from None


# The zarr 3 codecs read directly (zarr-specs v3: "bytes" turns a chunk into bytes of one endianness, the others
# compress those bytes); an array of any other codec (transpose, sharding...) is read through zarr's own API.
V3_BYTES_CODECS = {"zstd": "Zstd", "gzip": "GZip", "blosc": "Blosc", "crc32c": "CRC32C"}


def read_zarr3_folder(path, size):
    """The array of a zarr 3 folder (zarr-specs v3: zarr.json, a regular chunk grid, chunk keys "c/i/j/k" or
    "i.j.k", codecs "bytes" then compressors), read directly when its codecs are zarr 3's defaults' kind."""
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf-8") as f:
            meta = json.load(f)
        names = [codec["name"] for codec in meta["codecs"]]
        direct = (
            meta.get("zarr_format") == 3 and meta.get("node_type") == "array" and not meta.get("storage_transformers")
            and meta["chunk_grid"]["name"] == "regular" and names[:1] == ["bytes"]
            and all(name in V3_BYTES_CODECS for name in names[1:])
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):  # no zarr.json or not as written: zarr's API says what
        direct = False
    if not direct:
        return _read_with_zarr(path, size)
    numcodecs = _codecs(path)
    try:
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        endian = {"little": "<", "big": ">"}[meta["codecs"][0].get("configuration", {}).get("endian", "little")]
        dtype = np.dtype(meta["data_type"])
        _checked(path, shape, dtype, size)
        codecs = [getattr(numcodecs, V3_BYTES_CODECS[name])() for name in names[1:]]
        encoding = meta["chunk_key_encoding"]
        separator = encoding.get("configuration", {}).get("separator", "/" if encoding["name"] == "default" else ".")

        def chunk_of(index):
            key = separator.join(str(i) for i in index)
            chunk = os.path.join(path, *(["c", key] if encoding["name"] == "default" else [key]))
            if not os.path.exists(chunk):
                return None
            with open(chunk, "rb") as f:
                data = f.read()
            for codec in reversed(codecs):
                data = codec.decode(data)
            return np.frombuffer(data, dtype=dtype.newbyteorder(endian)).reshape(chunks)

        return _assemble(shape, chunks, dtype, meta.get("fill_value") or 0, chunk_of)
    except PredictionError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, OSError, EOFError) as exc:
        raise PredictionError(f"{path}: damaged zarr array ({type(exc).__name__}: {exc})") from None


def _read_with_zarr(path, size):
    """The array of a zarr folder through zarr's own API (zarr >= 3 reads zarr 2 and 3 folders)."""
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
    if os.path.exists(os.path.join(path, MAP)):  # HoVer-NeXt run on one .npy stack: one map of all images
        raise PredictionError(
            f"{path}: one HoVer-NeXt output folder (of an .npy stack?); evaluate reads its output of the split's "
            f'PNGs, one folder per patch: main.py --input "<split>/*.png" --output_root OUT, then --pred OUT'
        )
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
