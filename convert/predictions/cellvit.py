"""`cellvit`: CellViT / CellViT++ `cells.json`, one per patch, as their inference writes it.

Files: `<id>/cells.json` (pip `cellvit`, cellvit/inference/inference.py `CellViTInference.process_wsi`:
`<outdir>/<stem>/`) or `<id>_cells.json` (CellViT++'s repo CLI, `CellViTInferenceMemory.process_wsi`), each
also as `.snappy` (`--compression`: python-snappy's `compress` of the JSON text; reading it needs python-snappy).
CellViT writes no file for an image without cells: a missing file is a patch without nuclei.

A file is `{"wsi_metadata", "type_map", "cells": [{"bbox", "centroid": [x, y], "contour": [[x, y], ...],
"type", "type_prob", ...}]}`, coordinates in the slide's frame, contours open rings of pixel centres (OpenCV
contours), filled as cv2.fillPoly fills them (convert/polygons.py `contour_piece`); overlapping nuclei are
painted larger first, the smaller on top. CellViT's repo pads a 256 px tile to its 1024 px patch at the
top-left and does not take the padding off (pathopatch `pad_tile`; the pip package does, `_remove_padding`),
so its coordinates are all 1024 - 32 - 256 = 736 px too far on both axes: such a file is moved back, and a
note says how many were. Any other coordinate outside the patch is an error naming the file. The F1 point
of a nucleus is its `centroid`.

`type_map` names the types: {"1": "Neoplastic", ...} (CellViT++; keys are strings) or {"Neoplastic": 1, ...}
(the original CellViT). Names are ours case-insensitively; the binary models' "nuclei" / "Cell" are nuclei
without a class; any other name is an error unless --class-map maps it (convert/predictions/classes.py). A
folder without any of our classes is class-agnostic.
"""

import os

import numpy as np

from ..polygons import paint_contours
from .base import Prediction, PredictionError, empty_prediction, from_instances, listing, parse_json, stacked_points
from .classes import type_of, unknown_names_error

NAME = "cellvit"
PATCH_NAMES = ("{}/cells.json", "{}/cells.json.snappy", "{}_cells.json", "{}_cells.json.snappy")
FLAT_ENDINGS = ("_cells.json", "_cells.json.snappy")
CELLVIT_PATCH, CELLVIT_OVERLAP = 1024, 64  # the tile is padded into one such patch, starting half an overlap out


def padding_shift(size):
    """How far CellViT's repo leaves a lone tile's coordinates: the padding before it in its 1024 px patch."""
    return CELLVIT_PATCH - CELLVIT_OVERLAP // 2 - size


def recognise(path):
    if not os.path.isdir(path):
        return False
    for name in listing(path):
        if name.endswith(FLAT_ENDINGS):
            return True
        folder = os.path.join(path, name)
        if os.path.isdir(folder) and any(
            os.path.isfile(os.path.join(folder, f"cells.json{e}")) for e in ("", ".snappy")
        ):
            return True
    return False


def _text(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".snappy"):
        try:
            import snappy
        except ImportError:
            raise PredictionError(
                f"{path}: compressed with snappy (CellViT's --compression); pip install python-snappy to read it"
            ) from None
        try:
            data = snappy.uncompress(data)
        except Exception:  # noqa: BLE001  (python-snappy raises its own types, varying with its version)
            raise PredictionError(f"{path}: not snappy-compressed data") from None
    return data


def _type_names(type_map, path):
    """{type id: name} of a type_map in either direction (CellViT++: id -> name, CellViT: name -> id)."""
    if not isinstance(type_map, dict):
        raise PredictionError(f"{path}: no type_map object (not a CellViT cells.json)")
    names = {}
    for key, value in type_map.items():
        if isinstance(value, str) and str(key).lstrip("-").isdigit():
            names[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            names[value] = str(key)
        else:
            raise PredictionError(f"{path}: type_map entry {key!r}: {value!r} is not a type id and its name")
    return names


def _points(values, where, what):
    try:
        points = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PredictionError(f"{where}: {what} is not [x, y] number pairs") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise PredictionError(f"{where}: {what} is not [x, y] number pairs")
    if not np.isfinite(points).all():
        raise PredictionError(f"{where}: {what} has non-finite values (NaN or inf)")
    return points


def _plain_kinds(cells, names):
    """The type name of each cell if every cell has a contour, a centroid and an int type of the type_map; else
    None (the file is then checked one cell at a time)."""
    kinds = []
    for cell in cells:
        if not isinstance(cell, dict) or "contour" not in cell or "centroid" not in cell:
            return None
        kind = cell.get("type")
        if type(kind) is not int or kind not in names:
            return None
        kinds.append(names[kind])
    return kinds


def _checked_cells(path, cells, names):
    """(type names, contours (n, 2) float64) of the cells, checked one cell at a time so that the first problem
    is named."""
    contours, kinds = [], []
    for k, cell in enumerate(cells):
        where = f"{path}: cell {k}"
        if not isinstance(cell, dict) or not all(key in cell for key in ("contour", "centroid", "type")):
            raise PredictionError(f"{where}: no contour, centroid or type")
        if cell["type"] not in names or isinstance(cell["type"], bool):
            raise PredictionError(f"{where}: type {cell['type']!r} is not in the type_map")
        try:
            contour = np.asarray(cell["contour"], dtype=np.float64)
        except (TypeError, ValueError):
            contour = _points(cell["contour"], where, "contour")
        if contour.ndim != 2 or contour.shape[1] != 2 or not len(contour):
            _points(cell["contour"], where, "contour")
        contours.append(contour)
        kinds.append(names[cell["type"]])
    return kinds, contours


def read_file(path, size):
    """(contours, type names, centroids (N, 2), shifted) of one file, in the patch's frame."""
    document = parse_json(_text(path), path)
    if not isinstance(document, dict) or not isinstance(document.get("cells"), list):
        raise PredictionError(f'{path}: no "cells" list (not a CellViT cells.json)')
    names = _type_names(document.get("type_map"), path)
    cells = document["cells"]
    # All cells at once; only if something is wrong, one at a time to name it.
    kinds = _plain_kinds(cells, names)
    stacked = None if kinds is None else stacked_points([cell["contour"] for cell in cells])
    if stacked is None:
        kinds, contours = _checked_cells(path, cells, names)
        stacked = stacked_points([contour.tolist() for contour in contours])
    if not kinds:
        return [], [], np.zeros((0, 2)), False
    points, lengths = stacked
    try:
        centroids = np.array([cell["centroid"] for cell in cells], dtype=np.float64)
    except (TypeError, ValueError):
        centroids = np.zeros((0, 3))  # not pairs of numbers: named below
    if centroids.shape != (len(kinds), 2) or not np.isfinite(points).all() or not np.isfinite(centroids).all():
        for k, cell in enumerate(cells):
            _points(cell["contour"], f"{path}: cell {k}", "contour")
            _points([cell["centroid"]], f"{path}: cell {k}", "centroid")
    ends = np.cumsum(lengths)
    fraction = (points != np.round(points)).any(axis=1)
    if fraction.any():
        k = int(np.searchsorted(ends, np.flatnonzero(fraction)[0], side="right"))
        raise PredictionError(f"{path}: cell {k}: contour points are not whole pixels")
    both = np.concatenate([points, centroids])
    low, high = both.min(axis=0), both.max(axis=0)
    limit = np.array([size[1] - 1, size[0] - 1])
    shift = padding_shift(size[0]) if size[0] == size[1] else 0
    shifted = False
    if (low < 0).any() or (high > limit).any():
        if not (shift and (low >= shift).all() and (high <= limit + shift).all()):
            raise PredictionError(
                f"{path}: coordinates x {low[0]:g}..{high[0]:g}, y {low[1]:g}..{high[1]:g} leave the "
                f"{size[1]}x{size[0]} patch (and are not CellViT's {shift} px padding of a lone tile)"
            )
        points, centroids, shifted = points - shift, centroids - shift, True
    return np.split(points.astype(np.int32), ends[:-1]), kinds, centroids, shifted


def patch_paths(folder, patch_ids):
    """Per patch, the path of its cells.json (or None), after refusing files of patches not in the split."""
    names = listing(folder)
    found = {}
    for name in names:
        if name.endswith(FLAT_ENDINGS):
            found.setdefault(name.split("_cells.json")[0], []).append(name)
        elif os.path.isdir(os.path.join(folder, name)):
            for inner in ("cells.json", "cells.json.snappy"):
                if os.path.isfile(os.path.join(folder, name, inner)):
                    found.setdefault(name, []).append(f"{name}/{inner}")
    foreign = sorted(set(found) - set(patch_ids))
    if foreign:
        raise PredictionError(
            f"{folder}: {len(foreign)} CellViT file(s) not in the split, the first {found[foreign[0]][0]}"
        )
    twice = next((files for files in found.values() if len(files) > 1), None)
    if twice:
        raise PredictionError(f"{folder}: two cells files for one patch: {twice[0]} and {twice[1]}")
    return [os.path.join(folder, found[patch][0]) if patch in found else None for patch in patch_ids]


class CellvitPrediction(Prediction):
    name = NAME

    def __init__(self, path, patches, size, files, class_map):
        super().__init__(path, patches, size)
        self.files, self.class_map = files, class_map

    def _read_file(self, path):
        return read_file(path, self.size)

    def read(self, position):
        path = self.files[position]
        if path is None:  # CellViT writes nothing for an image without cells
            return empty_prediction(self.size)
        contours, names, centroids, _ = self.parsed(path, self._read_file)
        instance = paint_contours([[contour] for contour in contours], self.size)
        numbers = np.arange(1, len(contours) + 1)
        if not self.classified:
            ones = np.ones(len(numbers), dtype=np.int64)
            return from_instances(instance, numbers, ones, centroids, where=path)._replace(types=ones * 0)
        types = [type_of(name, self.class_map) for name in names]
        return from_instances(instance, numbers, types, centroids, where=path)


def open_layout(path, patches, size, *, class_map=None, **options):
    files = patch_paths(path, [patch for patch, _ in patches])
    prediction = CellvitPrediction(path, patches, size, files, dict(class_map or {}))
    # Every file is read here (and kept for scoring): a damaged one stops the command before anything is
    # scored, and the split's classes are known.
    names, moved = set(), 0
    for file in files:
        if file is not None:
            _, kinds, _, shifted = prediction.keep(file, prediction._read_file)
            names.update(kinds)
            moved += shifted
    unknown = {name for name in names if type_of(name, prediction.class_map) is None}
    if unknown:
        raise unknown_names_error(path, unknown)
    prediction.classified = any(type_of(name, prediction.class_map) > 0 for name in names)
    if moved:
        prediction.notes.append(
            f"cellvit: {moved} file(s) in the frame of CellViT's 1024 px patch around a lone tile (+"
            f"{padding_shift(prediction.size[0])} px on both axes, pathopatch pad_tile): moved back"
        )
    if not prediction.classified:
        prediction.notes.append("cellvit: no class of ours in the type_map of the cells: class-agnostic")
    return prediction
