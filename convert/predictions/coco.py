"""`coco`: a COCO results JSON, a list of {image_id, category_id, segmentation: {size, counts}, score[, bbox]}.

What detectron2 (`coco_instances_results.json`), mmdetection (`*.segm.json`), Ultralytics
(`val(save_json=True)` `predictions.json`) and pycocotools users write. An image is our COCO image id
(fold * 100000 + index, as in the coco export and as Ultralytics' `int(stem)` of its images) or the patch id
string (`"fold1_00042"`, Ultralytics' stem of the other exports' images); category ids 1..5 are our classes.
RLE is decoded by pycocotools; the instances of a patch become one map as detectron2 combines them.
"""

import json
import math
import os
from numbers import Real

import numpy as np
from pycocotools import mask as mask_utils

import pannuke_imagemask as pim

from .base import Prediction, PredictionError, empty_prediction
from .combine import combine

NAME = "coco"
RLE_FIRST, RLE_LAST = 48, 111  # the characters of COCO's compressed counts ('0'..'o')


def recognise(path):
    return os.path.isfile(path) and path.lower().endswith(".json")


def rle_counts(counts):
    """The run lengths of COCO's compressed counts string (pycocotools' rleFrString), or None if malformed."""
    runs, value, shift = [], 0, 0
    for char in counts:
        code = ord(char) - RLE_FIRST
        if not 0 <= code <= RLE_LAST - RLE_FIRST:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:  # the last group's high bit: the number is negative
            value -= 1 << shift
        if len(runs) > 2:  # from the fourth on, each run is stored as the difference to the one two before
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    return None if shift else runs


def _rle(segmentation):
    """pycocotools' RLE object of a checked {size, counts} (uncompressed counts compressed)."""
    height, width = segmentation["size"]
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": [height, width], "counts": segmentation["counts"].encode("ascii", errors="replace")}


def check_counts(segmentation, where):
    """Raise naming where unless the compressed counts are runs that cover the mask exactly."""
    height, width = segmentation["size"]
    if isinstance(segmentation["counts"], list):  # checked when opened
        return
    runs = rle_counts(segmentation["counts"])
    if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
        raise PredictionError(f"{where}: segmentation counts are not an RLE mask of {height}x{width}")


def decode_pieces(segmentations, wheres):
    """(top, left, bool crop) of each checked {size, counts}, decoded by pycocotools in one call.

    pycocotools refuses runs past the end of a mask but fills one whose runs stop short with whatever was in
    memory: a mask whose own encoding is not its counts was such a one, unless the counts were valid but not
    minimal, which the slow parse tells apart.
    """
    rles = [_rle(segmentation) for segmentation in segmentations]
    try:
        masks = mask_utils.decode(rles)  # (H, W, N) uint8
    except ValueError:
        masks = None
    if masks is None:
        for segmentation, where in zip(segmentations, wheres):
            check_counts(segmentation, where)
        raise PredictionError(f"{wheres[0]}: pycocotools cannot decode the segmentations")  # not reached
    for k, encoded in enumerate(mask_utils.encode(masks)):
        if encoded["counts"] != rles[k]["counts"]:
            check_counts(segmentations[k], wheres[k])
    boxes = mask_utils.toBbox(rles).astype(np.int64)  # [x, y, w, h] of each mask's pixels
    return [(y, x, masks[y : y + h, x : x + w, k].astype(bool)) for k, (x, y, w, h) in enumerate(boxes.tolist())]


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_entry(entry, where, size):
    """(image_id, category_id, score, segmentation) of one result, or one line naming where and what is wrong."""
    if not isinstance(entry, dict):
        raise PredictionError(f"{where}: a {type(entry).__name__}, expected a result object")
    for key in ("image_id", "category_id", "segmentation", "score"):
        if key not in entry:
            raise PredictionError(f"{where}: no {key!r}")
    image_id, category, score, segmentation = (entry[k] for k in ("image_id", "category_id", "score", "segmentation"))
    if not _integer(category) or not 1 <= category <= pim.NUM_CLASS_CHANNELS:
        raise PredictionError(f"{where}: category_id {category!r} is not one of 1..{pim.NUM_CLASS_CHANNELS}")
    if not isinstance(score, Real) or isinstance(score, bool) or not math.isfinite(score):
        raise PredictionError(f"{where}: score {score!r} is not a finite number")
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise PredictionError(f"{where}: segmentation is not RLE {{size, counts}} (polygons are not read)")
    if segmentation["size"] != list(size):
        raise PredictionError(f"{where}: segmentation size {segmentation['size']!r}, the patches are {list(size)}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_integer(c) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
            raise PredictionError(f"{where}: segmentation counts are not an RLE mask of {size[0]}x{size[1]}")
    elif not isinstance(counts, str):
        raise PredictionError(f"{where}: segmentation counts is a {type(counts).__name__}, expected a string or list")
    return image_id, category, float(score), segmentation


class CocoPrediction(Prediction):
    name = NAME

    def __init__(self, path, patches, size, results, min_score, max_overlap):
        super().__init__(path, patches, size)
        self.results = results  # per position: [(index in the file, category, score, segmentation)]
        self.min_score, self.max_overlap = min_score, max_overlap

    def read(self, position):
        results = self.results[position]
        if not results:
            return empty_prediction(self.size)
        pieces = decode_pieces([seg for _, _, _, seg in results], [f"{self.path}: [{k}]" for k, _, _, _ in results])
        scores = [score for _, _, score, _ in results]
        types = [category for _, category, _, _ in results]
        where = f"{self.path}: {self.patch(position)}"
        return combine(pieces, scores, types, self.min_score, self.max_overlap, self.size, where)


def open_layout(path, patches, size, *, min_score, max_overlap, **options):
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise PredictionError(f"{path}: not complete JSON ({exc})") from None
    except UnicodeDecodeError:
        raise PredictionError(f"{path}: not JSON text (not UTF-8)") from None
    if isinstance(data, dict):
        what = "a COCO annotation file" if "annotations" in data else "a JSON object"
        raise PredictionError(
            f"{path}: {what}, expected a results list [{{image_id, category_id, segmentation, score}}]"
        )
    if not isinstance(data, list):
        raise PredictionError(f"{path}: a JSON {type(data).__name__}, expected a results list")
    prediction = CocoPrediction(path, patches, size, [[] for _ in patches], min_score, max_overlap)
    by_patch = {patch: position for position, (patch, _) in enumerate(prediction.patches)}
    by_image = {image_id: position for position, (_, image_id) in enumerate(prediction.patches)}
    for k, entry in enumerate(data):
        where = f"{path}: [{k}]"
        image_id, category, score, segmentation = check_entry(entry, where, prediction.size)
        if _integer(image_id):
            position = by_image.get(image_id)
        else:
            position = by_patch.get(image_id) if isinstance(image_id, str) else None
        if position is None:
            raise PredictionError(f"{where}: image_id {image_id!r} is not a patch of the split")
        prediction.results[position].append((k, category, score, segmentation))
    return prediction
