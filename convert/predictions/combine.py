"""Overlapping scored instances (COCO results, YOLO lines) as one instance map, as detectron2's panoptic FPN does.

detectron2 `modeling/meta_arch/panoptic_fpn.py` `combine_semantic_and_instance_outputs`: instances in falling
score; stop at the first below the score threshold; skip an empty one and one whose overlap with the pixels
already taken is more than the overlap threshold times its area; else it takes its untaken pixels.
"""

import numpy as np

from .base import from_instances


def combine(pieces, scores, types, min_score, max_overlap, size, where):
    """PatchPrediction of instances in file order: pieces (top, left, bool crop) each mask's pixels within its
    box, scores (None: none given, so file order and all kept) and types (1..5) aligned with them.

    Ties in score keep file order (a stable sort, where detectron2's torch.argsort is not). An instance left
    without pixels (fully covered, possible only with max_overlap 1) is dropped: it has no pixel to score.
    """
    if scores is None:
        order = range(len(pieces))
    else:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    instance = np.zeros(size, dtype=np.int32)
    kept_types = []
    for k in order:
        if scores is not None and scores[k] < min_score:
            break
        top, left, crop = pieces[k]
        area = int(np.count_nonzero(crop))
        if area == 0:
            continue
        window = instance[top : top + crop.shape[0], left : left + crop.shape[1]]
        free = crop & (window == 0)
        overlap = area - int(np.count_nonzero(free))
        if overlap / area > max_overlap or overlap == area:
            continue
        window[free] = len(kept_types) + 1
        kept_types.append(types[k])
    return from_instances(instance, np.arange(1, len(kept_types) + 1), kept_types, where=where)
