"""What every prediction reader shares: the per-patch result, the reader's base class and the id checks."""

import json
import os
from itertools import chain
from typing import NamedTuple

import numpy as np
from PIL import Image

import pannuke_imagemask as pim

from ..numbers import distinct

NUM_TYPES = pim.NUM_CLASS_CHANNELS + 1  # HoVer-Net type values: 0 background, 1..5 the nucleus classes
MAX_PRED_ID = np.iinfo(np.int32).max  # the official script truncates to int32
FLOAT_PIECE = 1 << 15  # float prediction values cast and checked at a time: 256 KB of float64, within L2
# Bytes of source files whose checked contents a split keeps from its opening check for its reads: beyond, a
# file is parsed again when scored, so that a large split's memory stays bounded.
KEPT_SOURCE_BYTES = 64 << 20


class PredictionError(ValueError):
    """A prediction file is damaged, foreign to the split, or not in its layout."""


class PatchPrediction(NamedTuple):
    """One patch's prediction: class channels for PQ, one point and type per nucleus for F1."""

    channels: np.ndarray  # (H, W, 5) integer instance ids per class channel 0..4; channels after 4 are not read
    centroids: np.ndarray  # (N, 2) float64 (x, y) of each predicted nucleus
    types: np.ndarray  # (N,) int64: 1..5 = class + 1 (HoVer-Net's type ids); 0 = no type


class Prediction:
    """A split's predictions in one layout; read(position) gives the PatchPrediction of the split's row.

    Opened once in the parent and handed to workers: subclasses keep only paths and small tables in their
    state and open files lazily (a memory map or the files kept by `keep` in _cache are dropped when pickled).
    """

    name = ""
    classified = True

    def __init__(self, path, patches, size):
        self.path = path
        self.patches = [(str(patch), image_id) for patch, image_id in patches]
        self.size = tuple(int(s) for s in size)
        self.notes = []
        self._cache = {}

    def __len__(self):
        return len(self.patches)

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}

    def patch(self, position):
        return self.patches[position][0]

    def keep(self, path, parse):
        """parse(path), the checked contents of a file read when the split is opened, kept for `parsed` while the
        files kept stay within KEPT_SOURCE_BYTES of source."""
        stamp = file_stamp(path)  # before parsing: a file changed meanwhile is parsed again when scored
        contents = parse(path)
        kept = self._cache.setdefault("kept", {})
        used = self._cache.get("kept_bytes", 0)
        if used + stamp[0] <= KEPT_SOURCE_BYTES:
            kept[path] = (stamp, contents)
            self._cache["kept_bytes"] = used + stamp[0]
        return contents

    def parsed(self, path, parse):
        """parse(path), or what `keep` kept of it if the file's size and modification time are still the same:
        each file is parsed once. A file is handed out once (its memory then goes); a second read parses again."""
        stamp, contents = self._cache.get("kept", {}).pop(path, (None, None))
        if stamp is not None and stamp == file_stamp(path):
            return contents
        return parse(path)

    def read(self, position):
        raise NotImplementedError


class LabelFilePrediction(Prediction):
    """One class-agnostic label image per patch, `<id><ending>`; a missing file is a patch without nuclei
    (cellpose writes none then; the folder's opener decides whether a missing file is allowed at all)."""

    classified = False

    def __init__(self, path, patches, size, ending):
        super().__init__(path, patches, size)
        self.ending = ending

    def read_labels(self, path):
        """The (H, W) integer instance map of one file."""
        raise NotImplementedError

    def read(self, position):
        path = os.path.join(self.path, f"{self.patch(position)}{self.ending}")
        if not os.path.exists(path):
            return empty_prediction(self.size)
        return class_agnostic(self.read_labels(path), path)


def file_stamp(path):
    """(size, modification time in ns) of a file: what tells a file changed since it was read."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def parse_json(data, path):
    """The document of JSON bytes (UTF-8, as RFC 8259 wants) read from path, or one line naming path."""
    try:
        return json.loads(data.decode())
    except UnicodeDecodeError:
        raise PredictionError(f"{path}: not JSON text (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise PredictionError(f"{path}: not complete JSON ({exc})") from None


def read_json(path):
    """The document of a JSON file, or one line naming it."""
    with open(path, "rb") as f:
        return parse_json(f.read(), path)


def stacked_points(lists):
    """(points (P, 2) float64, lengths (L,)) of L non-empty lists of [x, y] number pairs, converted in one numpy
    call, or None if one is not that (its reader then names the problem, one list at a time)."""
    if not lists:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    if not all(type(values) is list and values for values in lists):
        return None
    pairs = list(chain.from_iterable(lists))
    try:
        # Numbers taken one level down, as a flat run: numpy converts them twice as fast as nested pairs.
        if set(map(list.__len__, pairs)) != {2}:
            return None
        flat = np.fromiter(chain.from_iterable(pairs), dtype=np.float64, count=2 * len(pairs))
    except (TypeError, ValueError):  # a pair that is not a list, or a value that is not a number
        return None
    return flat.reshape(-1, 2), np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))


def empty_prediction(size):
    """A patch without any predicted nucleus."""
    return PatchPrediction(
        np.zeros((*size, pim.NUM_CLASS_CHANNELS), dtype=np.int64), np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    )


def pixel_means(positions, numbers, count, width):
    """(count, 2) mean (x, y) of the pixels of each number 0..count-1 (each has some), at flat positions."""
    rows, cols = np.divmod(positions, width)
    area = np.bincount(numbers, minlength=count)
    x = np.bincount(numbers, weights=cols, minlength=count)
    y = np.bincount(numbers, weights=rows, minlength=count)
    return np.stack([x / area, y / area], axis=1)


def from_instances(instance_map, ids, types, centroids=None, where="prediction"):
    """A PatchPrediction of one (H, W) instance map whose nucleus ids[k] has type types[k] (0..5).

    Nuclei are numbered 1..n in increasing order of their ids; a nucleus of type t >= 1 goes whole to class
    channel t - 1, one of type 0 to no channel (HoVer-Net's background) but still counts for detection F1.
    centroids (N, 2) (x, y), as HoVer-Net's inst_centroid, else the mean (x, y) of each nucleus' pixels; with
    given centroids a listed id may have no pixels (it then counts for F1 only). Every id of the map must be
    listed; ids are non-negative integers up to int32's max, in any order, not necessarily contiguous.
    """
    instance = check_ids(instance_map, where, "instance map")
    height, width = instance.shape
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    types = np.asarray(types).reshape(-1).astype(np.int64)
    if len(types) != len(ids):
        raise PredictionError(f"{where}: {len(ids)} nuclei but {len(types)} types")
    if ids.size and (ids.min() < 1 or ids.max() > MAX_PRED_ID):
        raise PredictionError(
            f"{where}: nucleus id {ids.min() if ids.min() < 1 else ids.max()} is not in 1..{MAX_PRED_ID}"
        )
    if types.size and (types.min() < 0 or types.max() >= NUM_TYPES):
        bad = types[(types < 0) | (types >= NUM_TYPES)][0]
        raise PredictionError(f"{where}: nucleus type {bad} is not in 0..{NUM_TYPES - 1}")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    twice = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if twice.size:
        raise PredictionError(f"{where}: nucleus id {twice[0]} listed twice")
    flat = instance.ravel()
    nonzero = np.flatnonzero(flat)
    values = flat[nonzero]
    if len(ids) and sorted_ids[-1] == len(ids) and values.max(initial=0) <= len(ids):
        place = values.astype(np.int64) - 1  # ids 1..n (no repeats, the smallest 1): each id is its place
    else:
        place = np.minimum(np.searchsorted(sorted_ids, values), max(len(ids) - 1, 0))
        unknown = sorted_ids[place] != values if len(ids) else np.ones(len(nonzero), dtype=bool)
        if unknown.any():
            raise PredictionError(f"{where}: instance {values[unknown][0]} of the map has no type")
    # Numbers 1..n over the listed ids present in the map, in increasing id order, as evaluate renumbers.
    present = np.zeros(len(ids), dtype=bool)
    present[place] = True
    number_of = np.cumsum(present)  # the number of sorted id k, if present
    numbers = number_of[place]  # of the nonzero pixels
    n = int(number_of[-1]) if len(ids) else 0
    number_type = np.zeros(n + 1, dtype=np.int64)
    number_type[number_of[present]] = types[order][present]
    # int32: numbers 1..n fit (n is at most the pixels), and half the bytes of int64 to zero, write and match.
    channels = np.zeros((flat.size, pim.NUM_CLASS_CHANNELS), dtype=np.int32)
    pixel_type = number_type[numbers]
    kept = pixel_type != 0
    channels[nonzero[kept], pixel_type[kept] - 1] = numbers[kept]
    channels = channels.reshape(height, width, pim.NUM_CLASS_CHANNELS)
    if centroids is None:
        if n < len(ids):
            raise PredictionError(f"{where}: nucleus {sorted_ids[~present][0]} has no pixels in the instance map")
        points = np.empty((len(ids), 2))
        points[order] = pixel_means(nonzero, numbers - 1, n, width)
    else:
        points = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
        if len(points) != len(ids):
            raise PredictionError(f"{where}: {len(ids)} nuclei but {len(points)} centroids")
        if not np.isfinite(points).all():
            raise PredictionError(f"{where}: centroids have non-finite values (NaN or inf)")
    return PatchPrediction(channels, points, types)


def majority_types(instance, types):
    """(ids, type of each) of an instance map and a type map: the type most of its pixels have, ties to the lower.

    A nucleus whose pixels are mostly type 0 gets type 0. instance and types are checked non-negative integers.
    """
    values, inverse = distinct(instance)
    votes = np.bincount(inverse * NUM_TYPES + types.ravel(), minlength=len(values) * NUM_TYPES)
    votes = votes.reshape(len(values), NUM_TYPES)
    kind = votes.argmax(axis=1)
    nucleus = values != 0
    return values[nucleus], kind[nucleus]


def _cast_ids(source, out):
    """Cast float ids into int32 `out` a few rows at a time, while they are in the cache; True if every value
    is a non-negative integer of int32's range (the official script's truncation changes none of them)."""
    rows, cast_rows = (source, out) if source.ndim else (source.reshape(1), out.reshape(1))
    step = max(1, FLOAT_PIECE // max(1, rows[:1].size))
    with np.errstate(invalid="ignore"):  # NaN, inf and values beyond int32 cast to garbage, and then differ
        for start in range(0, len(rows), step):
            piece, cast = rows[start : start + step], cast_rows[start : start + step]
            np.copyto(cast, piece, casting="unsafe")
            if not np.equal(cast, piece).all() or (cast.size and cast.min() < 0):
                return False
    return True


def check_ids(values, where, what="prediction", channels=None):
    """Values as integers, or raise naming where if one is not a finite non-negative integer up to int32's max.

    With channels, only the first that many channels (last axis) are checked; the others may hold anything.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":  # a MATLAB struct or cell, complex numbers, strings: not ids
        raise PredictionError(f"{where}: {what} has dtype {values.dtype}, expected integers")
    if values.dtype.kind == "f":
        checked = values[..., :channels]
        # The official layout's background channel holds integers too: the whole contiguous patch is cast in
        # long runs, three times faster than the strided channels that count, which are cast alone if it fails.
        whole = values.ndim > 0 and channels is not None and values.shape[-1] > channels and values.flags.c_contiguous
        for source in (values, checked) if whole else (checked,):
            ids = np.empty(source.shape, dtype=np.int32)
            if _cast_ids(source, ids):
                return ids
        ids = np.empty(checked.shape, dtype=np.int32)
        with np.errstate(invalid="ignore"):
            np.copyto(ids, checked, casting="unsafe")  # all of it again, for the checks that name the problem
        if np.array_equal(ids, checked):
            values = ids  # negative integers, which the range check below names
        else:
            if not np.isfinite(checked).all():
                raise PredictionError(f"{where}: {what} has non-finite values (NaN or inf)")
            bad = checked[checked != np.floor(checked)]
            if bad.size:
                raise PredictionError(f"{where}: {what} has non-integer values (e.g. {bad.flat[0]:g})")
            values = checked  # integers beyond int32's range, which the range check below names
    if values.size and (values.min() < 0 or values.max() > MAX_PRED_ID):
        low, high = values[..., :channels].min(), values[..., :channels].max()
        if low < 0:
            raise PredictionError(f"{where}: {what} has negative values (min {low:g})")
        if high > MAX_PRED_ID:
            raise PredictionError(f"{where}: {what} has values above {MAX_PRED_ID} (max {high:g})")
    # Integers of up to 32 bits mix with the int64 keys as int64; uint64 would turn them into floats.
    return values if values.dtype.kind in "iu" and values.dtype.itemsize <= 4 else values.astype(np.int64)


def hovernet_to_channels(instance, types, where="prediction"):
    """(H, W, 5) class channels from an instance map and a type map (0 background, 1..5 the classes).

    A nucleus goes, whole, to the channel of the type most of its pixels have (ties to the lower type);
    a nucleus whose pixels are mostly type 0 is dropped, as the type map calls it background.
    """
    return hovernet_prediction(instance, types, where).channels


def hovernet_prediction(instance, types, where="prediction"):
    """The PatchPrediction of an instance map and a type map, each nucleus of its majority type."""
    instance = check_ids(instance, where, "instance channel")
    types = check_ids(types, where, "type channel")
    if types.max(initial=0) >= NUM_TYPES:
        raise PredictionError(f"{where}: type channel has values above {NUM_TYPES - 1} (max {types.max()})")
    ids, kinds = majority_types(instance, types)
    return from_instances(instance, ids, kinds, where=where)


def check_dtype(path, dtype):
    if dtype.kind not in "biuf":
        raise PredictionError(f"{path}: dtype {dtype} is not numeric")


def listing(folder):
    """The visible file names of a folder, sorted."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def patch_files(folder, patch_ids, ending, what="prediction(s)", required=True):
    """The files <id><ending> in folder, in the split's order, after the one check all per-patch layouts make:
    no file with that ending that is not one of the split's (and, if required, none missing).

    One line names the first file that is wrong and how many there are.
    """
    names = {name for name in listing(folder) if name.endswith(ending)}
    expected = [f"{patch}{ending}" for patch in patch_ids]
    missing = [name for name in expected if name not in names]
    if required and missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} {what} missing, the first {missing[0]}")
    foreign = sorted(names - set(expected))
    if foreign:
        raise PredictionError(f"{folder}: {len(foreign)} {what} not in the split, the first {foreign[0]}")
    return [name for name in expected if name in names]


def class_agnostic(instance, where):
    """The PatchPrediction of an instance map without classes: every nucleus in channel 0, of type 0 (unknown)."""
    instance = check_ids(instance, where, "instance map")
    ids = distinct(instance)[0]
    ids = ids[ids != 0]
    prediction = from_instances(instance, ids, np.ones(len(ids), dtype=np.int64), where=where)
    return prediction._replace(types=np.zeros(len(ids), dtype=np.int64))


PNG_MODES = {"L": "8-bit grey", "I;16": "16-bit grey", "P": "palette"}


def check_png(path, size, modes):
    """Check a PNG's header: its size and that its mode is one of modes (keys of PNG_MODES); returns the mode."""
    try:
        with Image.open(path) as image:
            kind, mode, (width, height) = image.format, image.mode, image.size
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for a damaged or foreign file
        raise PredictionError(f"{path}: not a readable PNG ({exc})") from None
    if kind != "PNG":
        raise PredictionError(f"{path}: a {kind} image, expected a PNG")
    if mode not in modes:
        wanted = " or ".join(PNG_MODES[m] for m in modes)
        raise PredictionError(f"{path}: a {mode} PNG, expected one {wanted} channel")
    if (height, width) != tuple(size):
        raise PredictionError(f"{path}: {width}x{height} pixels, the patches are {size[1]}x{size[0]}")
    return mode


def read_png(path, size, modes):
    """The pixels of a PNG checked as check_png checks it; a damaged body is a one-line error too."""
    check_png(path, size, modes)
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise PredictionError(f"{path}: not a readable PNG ({exc})") from None
