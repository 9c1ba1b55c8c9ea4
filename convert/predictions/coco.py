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

import numpy as np
from pycocotools import mask as mask_utils

import pannuke_imagemask as pim

from .base import Prediction, PredictionError, empty_prediction
from .combine import combine

NAME = "coco"
RLE_FIRST, RLE_LAST = 48, 111  # the characters of COCO's compressed counts ('0'..'o')
LONG_COUNTS, LONG_RUN = 1 << 20, 8  # counts_cover's bounds: longer strings and runs are read one by one


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


def _segment_sums(values, starts, ufunc=np.add):
    return ufunc.reduceat(values, starts) if len(values) else np.zeros(0, dtype=values.dtype)


def counts_cover(strings, pixels):
    """Whether each compressed counts string is runs, none negative, that cover exactly pixels: the
    runs rle_counts reads, checked for a whole file at once in numpy (pycocotools decodes runs that stop
    short without a word, and re-encoding every mask to find them costs more than decoding them).

    Strings of more than LONG_COUNTS characters, or with a run of more than LONG_RUN characters, are
    read by rle_counts itself: below those bounds no sum leaves int64.
    """
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    covered = (lengths == 0) & (pixels == 0)  # "" has no runs: it covers nothing
    slow = lengths > LONG_COUNTS
    read = np.flatnonzero((lengths > 0) & ~slow)
    if len(read):
        codes = np.frombuffer("".join(strings[k] for k in read).encode("utf-32-le"), dtype=np.uint32)
        codes = codes.astype(np.int64) - RLE_FIRST
        first = np.cumsum(lengths[read]) - lengths[read]  # each string's first character
        last = first + lengths[read] - 1
        # A run ends at a character without the continuation bit, and (to keep the strings apart) at a
        # string's last character, which is malformed if it continues.
        ends = (codes & 0x20) == 0
        malformed = _segment_sums((codes < 0) | (codes > RLE_LAST - RLE_FIRST), first, np.logical_or) | ~ends[last]
        ends[last] = True
        run_first = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
        run_length = np.diff(np.append(run_first, len(codes)))
        place = np.arange(len(codes)) - np.repeat(run_first, run_length)  # a character's place in its run
        long_run = np.zeros(len(codes), dtype=bool)
        long_run[run_first[run_length > LONG_RUN]] = True
        slow[read] |= _segment_sums(long_run, first, np.logical_or)
        value = _segment_sums((codes & 0x1F) << (5 * np.minimum(place, LONG_RUN)), run_first)
        negative = (codes[run_first + run_length - 1] & 0x10) != 0
        value[negative] -= np.int64(1) << (5 * np.minimum(run_length[negative], LONG_RUN + 1))
        # From the fourth run on, a run is stored as its difference to the one two before: the runs are
        # sums over each string's odd runs and over its even runs from the third on.
        string_first_run = np.searchsorted(run_first, first)
        run_string = np.repeat(np.arange(len(read)), np.diff(np.append(string_first_run, len(run_first))))
        place = np.arange(len(run_first)) - string_first_run[run_string]
        group = run_string * 3 + np.where(place == 0, 0, 2 - place % 2)
        order = np.argsort(group, kind="stable")
        summed = np.cumsum(value[order])
        group_first = np.flatnonzero(np.concatenate([[True], group[order][1:] != group[order][:-1]]))
        summed -= np.repeat(
            summed[group_first] - value[order][group_first], np.diff(np.append(group_first, len(order)))
        )
        runs = np.empty_like(summed)
        runs[order] = summed
        total, smallest = _segment_sums(runs, string_first_run), _segment_sums(runs, string_first_run, np.minimum)
        covered[read] = ~malformed & (smallest >= 0) & (total == pixels)
    for k in np.flatnonzero(slow):
        runs = rle_counts(strings[k])
        covered[k] = runs is not None and min(runs, default=0) >= 0 and sum(runs) == pixels
    return covered


def decode_pieces(segmentations, wheres):
    """(top, left, bool crop) of each checked {size, counts} (counts_cover), decoded by pycocotools in one call."""
    rles = [_rle(segmentation) for segmentation in segmentations]
    try:
        masks = mask_utils.decode(rles)  # (H, W, N) uint8
    except ValueError:  # not reached: every counts was checked when the file was opened
        raise PredictionError(f"{wheres[0]}: pycocotools cannot decode the segmentations") from None
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
    # JSON numbers load as int or float: no ABC check of numbers.Real, 8,000 times per file.
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
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
    # Compressed counts are checked all at once (uncompressed ones were, in check_entry).
    compressed = [k for k, entry in enumerate(data) if isinstance(entry["segmentation"]["counts"], str)]
    height, width = prediction.size
    covered = counts_cover([data[k]["segmentation"]["counts"] for k in compressed], height * width)
    damaged = [k for k, good in zip(compressed, covered) if not good]
    if damaged:
        raise PredictionError(f"{path}: [{damaged[0]}]: segmentation counts are not an RLE mask of {height}x{width}")
    return prediction
