"""`hovernet-json`: HoVer-Net's `run_infer.py tile` JSON, OUT/json/<id>.json (infer/tile.py `proc_callback`).

Each file is `{"mag": ..., "nuc": {"<id>": {"bbox", "centroid": [x, y], "contour": [[x, y], ...], "type",
"type_prob"}}}` (infer/base.py `__save_json`): the contour is the first of `cv2.findContours(RETR_TREE,
CHAIN_APPROX_SIMPLE)` on the nucleus' box (models/hovernet/post_proc.py `process`), an open ring of pixel
centres. Each nucleus is filled from it as OpenCV draws it (`cv2.fillPoly`, boundary pixels included), which
gives back the pixels of the nucleus' 8-connected piece that contour outlines, its holes filled; nuclei
that overlap then (one inside another's hole) are painted larger first, the smaller on top. The F1 point of
a nucleus is its `centroid`, as HoVer-Net's `inst_centroid`. `type` 1..5 is our class + 1; `type` 0
("nolabe" in HoVer-Net's PanNuke type_info.json) is a nucleus without a class: in no class channel, so
outside PQ, and counted by detection F1 only (never of a class), as in the hovernet-mat layout; `type` null
in every file (HoVer-Net run without types) makes the folder class-agnostic. `"nuc": {}` is a patch without
nuclei; a missing file is an error (HoVer-Net writes one per image).

When `mat/` stands beside `json/`, the `.mat` files are scored instead (exact pixels: the JSON's contours lose
holes, a nucleus' second piece and nuclei of fewer than 3 contour points), and a note says so.
"""

import os

import numpy as np

from ..polygons import paint_contours
from . import hovernet_mat
from .base import (
    MAX_PRED_ID,
    NUM_TYPES,
    Prediction,
    PredictionError,
    from_instances,
    listing,
    patch_files,
    read_json,
    stacked_points,
)

NAME = "hovernet-json"


def json_folder(path):
    """The folder of the .json files: OUT/json of HoVer-Net's output folder, else PATH itself."""
    inner = os.path.join(path, "json")
    return inner if os.path.isdir(inner) else path


def mat_beside(path):
    """HoVer-Net's mat/ folder beside its json/ (PATH being OUT or OUT/json), or None."""
    for folder in (os.path.join(path, "mat"), os.path.join(os.path.dirname(os.path.normpath(path)), "mat")):
        if os.path.isdir(folder) and os.path.isdir(os.path.join(os.path.dirname(folder), "json")):
            return folder
    return None


def recognise(path):
    """HoVer-Net's output folder (a json/ folder), or a folder of .json files the first of which has "nuc"."""
    if not os.path.isdir(path):
        return False
    if os.path.isdir(os.path.join(path, "json")):
        return True
    first = next((name for name in listing(path) if name.endswith(".json")), None)
    if first is None or not os.path.isfile(os.path.join(path, first)):
        return False
    try:
        document = read_json(os.path.join(path, first))
    except PredictionError:
        return False
    return isinstance(document, dict) and "nuc" in document


def _whole_points(values, where, what, count=None):
    try:
        points = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PredictionError(f"{where}: {what} is not [x, y] number pairs") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0 or (count and len(points) != count):
        raise PredictionError(f"{where}: {what} is not [x, y] number pairs")
    if not np.isfinite(points).all():
        raise PredictionError(f"{where}: {what} has non-finite values (NaN or inf)")
    return points


def _check_nucleus(where, nucleus, size):
    """The checks of one nucleus' contour and centroid, one line naming what is wrong: run when its file's
    checks, made for all its nuclei at once, found something."""
    height, width = size
    contour = _whole_points(nucleus["contour"], where, "contour")
    if not np.array_equal(contour, np.round(contour)):
        raise PredictionError(f"{where}: contour points are not whole pixels")
    if contour.min() < 0 or contour[:, 0].max() > width - 1 or contour[:, 1].max() > height - 1:
        raise PredictionError(f"{where}: contour leaves the {width}x{height} patch")
    centroid = _whole_points([nucleus["centroid"]], where, "centroid", 1)[0]
    if (centroid < 0).any() or centroid[0] > width - 1 or centroid[1] > height - 1:
        raise PredictionError(f"{where}: centroid ({centroid[0]:g}, {centroid[1]:g}) is outside the patch")


def _points_fit(points, centroids, count, size):
    """Whether every contour point is a whole pixel of the patch and every centroid (count of them) a finite
    point in it."""
    limit = np.array([size[1] - 1, size[0] - 1])
    return (
        centroids.shape == (count, 2)
        and np.isfinite(centroids).all()
        and np.array_equal(points, np.round(points))
        and points.min() >= 0
        and (points.max(axis=0) <= limit).all()
        and centroids.min() >= 0
        and (centroids.max(axis=0) <= limit).all()
    )


def _plain_rows(nuc):
    """[(id, nucleus)] in id order if every nucleus has an id in 1..MAX_PRED_ID, a contour, a centroid and a
    type 0..5 or null; else None (the file is then checked one nucleus at a time)."""
    rows = []
    for key, nucleus in nuc.items():
        if not (key.isascii() and key.isdigit() and 1 <= int(key) <= MAX_PRED_ID):
            return None
        if not isinstance(nucleus, dict) or "contour" not in nucleus or "centroid" not in nucleus:
            return None
        kind = nucleus.get("type")
        if kind is not None and (type(kind) is not int or not 0 <= kind < NUM_TYPES):
            return None
        rows.append((int(key), nucleus))
    rows.sort(key=lambda row: row[0])
    return rows


def _checked_rows(path, nuc, size):
    """[(id, nucleus)] in id order and their contours (n, 2) float64, checked one nucleus at a time so that the
    first problem is named."""
    rows = []
    for key, nucleus in nuc.items():
        where = f"{path}: nucleus {key}"
        if not key.isdigit() or not 1 <= int(key) <= MAX_PRED_ID:
            raise PredictionError(f"{where}: its id is not a whole number in 1..{MAX_PRED_ID}")
        if not isinstance(nucleus, dict) or "contour" not in nucleus or "centroid" not in nucleus:
            raise PredictionError(f"{where}: no contour or centroid")
        kind = nucleus.get("type")
        if kind is not None and (not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind < NUM_TYPES):
            raise PredictionError(f"{where}: type {kind!r} is not one of 0..{NUM_TYPES - 1} or null")
        try:
            contour = np.asarray(nucleus["contour"], dtype=np.float64)
        except (TypeError, ValueError):
            _check_nucleus(where, nucleus, size)
        if contour.ndim != 2 or contour.shape[1] != 2 or not len(contour):
            _check_nucleus(where, nucleus, size)
        rows.append((int(key), nucleus, contour))
    rows.sort(key=lambda row: row[0])
    return [row[:2] for row in rows], [row[2] for row in rows]


def read_file(path, size):
    """(ids, contours, types (int or None each), centroids (N, 2)) of one file, in increasing id order."""
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("nuc"), dict):
        raise PredictionError(f'{path}: no "nuc" object (not a HoVer-Net JSON)')
    # All nuclei at once; only if something is wrong, one at a time to name it.
    rows = _plain_rows(document["nuc"])
    stacked = None if rows is None else stacked_points([nucleus["contour"] for _, nucleus in rows])
    if stacked is None:
        rows, contours = _checked_rows(path, document["nuc"], size)
        stacked = stacked_points([contour.tolist() for contour in contours])
    points, lengths = stacked
    try:
        centroids = np.array([nucleus["centroid"] for _, nucleus in rows], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        centroids = np.full((len(rows), 3), np.nan)  # not pairs of numbers: named below
    if rows and not _points_fit(points, centroids, len(rows), size):
        for key, nucleus in rows:
            _check_nucleus(f"{path}: nucleus {key}", nucleus, size)
    contours = np.split(points.astype(np.int32), np.cumsum(lengths)[:-1]) if rows else []
    return [key for key, _ in rows], contours, [nucleus.get("type") for _, nucleus in rows], centroids


class HovernetJsonPrediction(Prediction):
    name = NAME

    def __init__(self, path, patches, size, folder, classified):
        super().__init__(path, patches, size)
        self.folder, self.classified = folder, classified

    def _read_file(self, path):
        return read_file(path, self.size)

    def read(self, position):
        path = os.path.join(self.folder, f"{self.patch(position)}.json")
        ids, contours, types, centroids = self.parsed(path, self._read_file)
        instance = paint_contours([[contour] for contour in contours], self.size)
        numbers = np.arange(1, len(ids) + 1)  # paint numbers the nuclei 1..n in id order
        if not self.classified:
            prediction = from_instances(instance, numbers, np.ones(len(ids), dtype=np.int64), centroids, where=path)
            return prediction._replace(types=np.zeros(len(ids), dtype=np.int64))
        return from_instances(instance, numbers, types, centroids, where=path)


def open_layout(path, patches, size, **options):
    mat = mat_beside(path)
    if mat is not None:
        prediction = hovernet_mat.open_layout(mat, patches, size, **options)
        prediction.notes.append(
            "hovernet-json: mat/ stands beside json/: its .mat files are scored (exact pixels; the JSON contours "
            "lose holes, second pieces and nuclei of fewer than 3 contour points)"
        )
        return prediction
    folder = json_folder(path)
    expected = patch_files(folder, [patch for patch, _ in patches], ".json", "prediction(s)")
    prediction = HovernetJsonPrediction(path, patches, size, folder, True)
    # Every file is read here (and kept for scoring): a damaged one stops the command before anything is
    # scored, and whether HoVer-Net ran with types is known for the whole folder.
    typed, untyped = None, None  # the first file with a type, and with a null type
    for name in expected:
        _, _, types, _ = prediction.keep(os.path.join(folder, name), prediction._read_file)
        typed = typed or (name if any(kind is not None for kind in types) else None)
        untyped = untyped or (name if None in types else None)
    if typed and untyped:
        raise PredictionError(f"{os.path.join(folder, untyped)}: type null, but {typed} has types")
    prediction.classified = bool(typed)
    if not prediction.classified:
        prediction.notes.append("hovernet-json: every type is null (HoVer-Net run without types): class-agnostic")
    return prediction
