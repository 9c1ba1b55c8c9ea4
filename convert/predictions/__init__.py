"""Prediction readers: one module per layout that a framework writes when it predicts, behind one interface.

`open_prediction(path, pred_format, patches, size)` opens a split's predictions once, after checking up front
all it cheaply can; `Prediction.read(position)` gives one patch's `PatchPrediction`: (H, W, 5) class channels
for PQ and one (x, y) point and type per nucleus for F1. A layout module has:

- `NAME`, its --pred-format value;
- `recognise(path)`: whether PATH holds what only this layout has (names only: a mat/ or labels/ folder, a
  cellpose file suffix, a .npy or .json file); `PATCH_FILE`, for the layouts of one generic file per patch
  (`.npy`, `.txt`, `.png`), the ending that points to it when no layout's own mark is there;
- `open_layout(path, patches, size, **options)`: the checked Prediction.
"""

import importlib
import os

from .base import (
    MAX_PRED_ID,
    NUM_TYPES,
    PatchPrediction,
    Prediction,
    PredictionError,
    check_ids,
    from_instances,
    hovernet_to_channels,
    listing,
)
from .hovernet import check_prediction_folder
from .masks import open_masks_prediction

__all__ = [
    "LAYOUT_NAMES",
    "MAX_PRED_ID",
    "NUM_TYPES",
    "PatchPrediction",
    "Prediction",
    "PredictionError",
    "check_ids",
    "check_prediction_folder",
    "from_instances",
    "hovernet_to_channels",
    "open_masks_prediction",
    "open_prediction",
]

LAYOUT_NAMES = (
    "masks", "hovernet", "hovernet-mat", "coco", "yolo", "cellpose", "semantic", "tiff", "hovernext", "conic",
    "hovernet-json", "cellvit", "geojson",
)
_MODULES = {name: name.replace("-", "_") for name in LAYOUT_NAMES}
# Recognition: first a layout's own mark, the most specific first (HoVer-Net's output folder holds PNG
# overlays, a YOLO predict folder PNG drawings, a cellpose folder the images and _seg.npy pickles beside the
# masks); else the generic per-patch files, the ending that most patches of the split have winning (a
# notes.txt beside <id>.npy files does not make a YOLO folder), ties in this order. A CoNIC labels.npy is told
# from a masks.npy by its header (2 channels); the writers' own TIFF names (<id>_cp_masks.tif beside cellpose's
# _seg.npy) before cellpose's PNGs; plain <id>.tif before <id>.png, as the images a model ran on may be PNGs.
_MARKED = ("conic", "masks", "coco", "hovernet-json", "hovernet-mat", "yolo", "tiff", "cellpose", "hovernext", "cellvit",
           "geojson")  # fmt: skip
_GENERIC = ("hovernet", "yolo", "tiff", "semantic")
DEFAULT_MIN_SCORE = 0.5
DEFAULT_MAX_OVERLAP = 0.5


def layout_module(name):
    if name not in LAYOUT_NAMES:
        raise ValueError(f"unknown prediction format {name!r}; valid: {', '.join(LAYOUT_NAMES)}")
    return importlib.import_module(f".{_MODULES[name]}", __name__)


def recognise(path, patch_ids):
    """The layout PATH holds, or a one-line error saying what evaluate reads."""
    for name in _MARKED:
        if layout_module(name).recognise(path):
            return name
    if os.path.isdir(path):
        names = set(listing(path))
        evidence = {}
        for name in _GENERIC:
            ending = layout_module(name).PATCH_FILE
            of_patches = sum(f"{patch}{ending}" in names for patch in patch_ids)
            evidence[name] = (of_patches, sum(n.endswith(ending) for n in names))
        best = max(_GENERIC, key=lambda name: evidence[name])  # the first of equals
        if evidence[best] > (0, 0):
            return best
    raise PredictionError(
        f"{path}: not a prediction layout evaluate reads (a masks.npy or CoNIC labels.npy, a COCO results .json, or "
        "a folder of HoVer-Net .mat, .json or <id>.npy files, Ultralytics labels/*.txt, cellpose *_cp_masks.png, "
        "label TIFFs, HoVer-NeXt output folders, class PNGs, CellViT cells.json or GeoJSON); "
        f"say which with --pred-format {'|'.join(LAYOUT_NAMES)}"
    )


def open_prediction(
    path, pred_format, patches, size, *, min_score=DEFAULT_MIN_SCORE, max_overlap=DEFAULT_MAX_OVERLAP, class_map=None
):
    """The split's predictions at path, in pred_format (None: recognised from what path holds).

    patches: the split's rows in order as (patch_id, coco_image_id); size: (H, W). min_score and max_overlap
    rule how the instance layouts (coco, yolo) become one map per patch; class_map ({name casefolded: type
    0..5}, classes.parse_class_map) names the classes of the layouts that name theirs (geojson, cellvit). Raises ValueError,
    FileNotFoundError or PanNukeFormatError with one line naming the file and what is wrong.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder (--pred)")
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"--max-overlap must be in 0..1, got {max_overlap}")
    name = recognise(path, [patch for patch, _ in patches]) if pred_format is None else pred_format
    module = layout_module(name)
    options = {"min_score": min_score, "max_overlap": max_overlap, "class_map": dict(class_map or {})}
    return module.open_layout(path, patches, tuple(size), **options)
