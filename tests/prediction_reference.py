"""Independent conversions of predictions, for tests/test_predictions.py and consumer_tests/test_predictions.py.

Written from the rules in docs/evaluate.md (detectron2's panoptic FPN combination, 8-connected components),
by other routes than convert/predictions/: full-size masks, Python's sort, pixel-by-pixel loops, OpenCV's
connected components where the reader uses scipy.
"""

import cv2
import numpy as np


def expected(instance, types):
    """(channels, centroids, types) of an instance map numbered 1..n, nucleus k of types[k - 1] (0: no channel),
    written out pixel by pixel."""
    channels = np.zeros((*instance.shape, 5), dtype=np.int64)
    centroids = []
    for number, kind in enumerate(types, 1):
        ys, xs = np.nonzero(instance == number)
        if kind:
            channels[ys, xs, kind - 1] = number
        centroids.append([xs.mean(), ys.mean()])
    return channels, np.array(centroids, dtype=np.float64).reshape(-1, 2), np.array(types, dtype=np.int64)


def reference_combination(masks, scores, types, min_score=0.5, max_overlap=0.5, size=(256, 256)):
    """The panoptic FPN rule in plain Python on full-size masks: (instance map 1..n, types of 1..n)."""
    order = sorted(range(len(masks)), key=lambda k: -scores[k]) if scores is not None else range(len(masks))
    taken = np.zeros(size, dtype=np.int64)
    kept = []
    for k in order:
        if scores is not None and scores[k] < min_score:
            break
        area = int(masks[k].sum())
        overlap = int((masks[k] & (taken > 0)).sum())
        if area == 0 or overlap / area > max_overlap or overlap == area:
            continue
        taken[masks[k] & (taken == 0)] = len(kept) + 1
        kept.append(types[k])
    return taken, kept


def components(semantic):
    """8-connected components of each class by OpenCV (another library than the reader's), numbered class by
    class in raster order of their first pixel."""
    instance, types = np.zeros(semantic.shape, dtype=np.int64), []
    for kind in range(1, 6):
        count, labels = cv2.connectedComponents((semantic == kind).astype(np.uint8), connectivity=8)
        firsts = sorted((int(np.flatnonzero(labels.ravel() == k)[0]), k) for k in range(1, count))
        for _, k in firsts:
            types.append(kind)
            instance[labels == k] = len(types)
    return instance, types
