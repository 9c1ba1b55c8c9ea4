"""`yolo`: Ultralytics `predict(save_txt=True[, save_conf=True])`, labels/<stem>.txt, one polygon per line.

A line is `cls x1 y1 ... xn yn [conf]`, cls 0..4 our classes, coordinates divided by the width and height
(engine/results.py `Results.save_txt`); an image without detections gets no file. Each polygon becomes a
mask as Ultralytics' own data/utils.py `polygon2mask` makes one: the numbers parsed as float32, times the
size, cast to int32, filled by OpenCV's `fillPoly` with colour 1 (no downsampling at our 256 px); the
masks then become one instance map as detectron2 combines instances (combine.py).
"""

import os

import cv2
import numpy as np

from .base import Prediction, PredictionError, empty_prediction, listing
from .combine import combine

NAME = "yolo"
NUM_CLASSES = 5


def labels_folder(path):
    """The folder of the .txt files: PATH/labels of a predict folder, else PATH itself."""
    inner = os.path.join(path, "labels")
    return inner if os.path.isdir(inner) else path


PATCH_FILE = ".txt"  # a labels/ folder itself has no other mark


def recognise(path):
    return os.path.isdir(os.path.join(path, "labels"))


def polygon_piece(points, size):
    """(top, left, bool crop) of polygon2mask's fill of (n, 2) float32 (x, y) pixel coordinates.

    Filling only the vertices' box inside the image gives the same pixels: the int32 vertices move by whole
    pixels and fillPoly never paints outside their box; the image border clips both alike.
    """
    height, width = size
    vertices = np.asarray(points, dtype=np.int32)  # polygon2mask's cast: truncation toward zero
    left, top = vertices.min(axis=0)
    right, bottom = np.minimum(vertices.max(axis=0), (width - 1, height - 1))
    if right < left or bottom < top:  # only on the far border (x or y = 1.0): outside the image
        return 0, 0, np.zeros((0, 0), dtype=bool)
    crop = np.zeros((bottom - top + 1, right - left + 1), dtype=np.uint8)
    cv2.fillPoly(crop, [vertices - (left, top)], color=1)
    return int(top), int(left), crop.view(bool)


def parse_labels(path, size):
    """(polygons as (n, 2) float32 pixel coordinates, classes, confidences or None) of one labels file."""
    height, width = size
    polygons, classes, confidences = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}: line {number}"
        if not tokens[0].isdigit() or int(tokens[0]) >= NUM_CLASSES:
            raise PredictionError(f"{where}: class {tokens[0]!r} is not one of 0..{NUM_CLASSES - 1}")
        try:
            values = np.array(tokens[1:], dtype=np.float32)  # as Ultralytics parses a label line
        except ValueError:
            bad = next(t for t in tokens[1:] if not _is_number(t))
            raise PredictionError(f"{where}: {bad!r} is not a number") from None
        with_conf = len(values) % 2 == 1  # an odd count: the coordinates' pairs and the confidence
        if confidences and (confidences[0] is not None) != with_conf:
            raise PredictionError(f"{where}: lines with and without a confidence in one file")
        coordinates = values[:-1] if with_conf else values
        if not np.isfinite(values).all():
            raise PredictionError(f"{where}: non-finite number (NaN or inf)")
        if len(coordinates) < 6:
            raise PredictionError(f"{where}: {len(coordinates) // 2} point(s), a polygon needs at least 3")
        if coordinates.min() < 0 or coordinates.max() > 1:
            bad = coordinates[(coordinates < 0) | (coordinates > 1)][0]
            raise PredictionError(f"{where}: coordinate {bad:g} outside 0..1 (coordinates are divided by the size)")
        points = coordinates.reshape(-1, 2) * np.array([width, height], dtype=np.float32)
        polygons.append(points)
        classes.append(int(tokens[0]))
        confidences.append(float(tokens[-1]) if with_conf else None)
    if confidences and confidences[0] is None:
        return polygons, classes, None
    return polygons, classes, confidences


def _is_number(token):
    try:
        float(token)
    except ValueError:
        return False
    return True


class YoloPrediction(Prediction):
    name = NAME

    def __init__(self, path, patches, size, folder, min_score, max_overlap):
        super().__init__(path, patches, size)
        self.folder, self.min_score, self.max_overlap = folder, min_score, max_overlap

    def read(self, position):
        path = os.path.join(self.folder, f"{self.patch(position)}.txt")
        if not os.path.exists(path):  # Ultralytics writes no file for an image without detections
            return empty_prediction(self.size)
        polygons, classes, confidences = parse_labels(path, self.size)
        pieces = [polygon_piece(points, self.size) for points in polygons]
        types = [c + 1 for c in classes]
        return combine(pieces, confidences, types, self.min_score, self.max_overlap, self.size, path)


def open_layout(path, patches, size, *, min_score, max_overlap, **options):
    folder = labels_folder(path)
    prediction = YoloPrediction(path, patches, size, folder, min_score, max_overlap)
    known = {f"{patch}.txt" for patch, _ in prediction.patches}
    foreign = [name for name in listing(folder) if name.endswith(".txt") and name not in known]
    if foreign:
        raise PredictionError(f"{folder}: {len(foreign)} label file(s) not in the split, the first {foreign[0]}")
    return prediction
