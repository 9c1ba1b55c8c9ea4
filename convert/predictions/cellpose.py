"""`cellpose`: cellpose's `--save_png` masks, <id>_cp_masks.png (or <id>_masks.png), 16-bit instance ids.

cellpose/io.py `save_masks`: 0 background, 1..N the nuclei, no classes, and no file for an image without
masks. Class-agnostic: every nucleus goes to channel 0 with type 0. Its default output, `_seg.npy`, is a
pickle and is never read; its `--save_tif` masks are the `tiff` layout's.
"""

import os

from .base import LabelFilePrediction, PredictionError, check_png, listing, patch_files, read_png

NAME = "cellpose"
SUFFIXES = ("_cp_masks", "_masks")  # cellpose's own output first; _masks is its training files' name
MODES = ("I;16", "L")


def recognise(path):
    if not os.path.isdir(path):
        return False
    return any(name.endswith(("_masks.png", "_seg.npy", "_cp_masks.tif")) for name in os.listdir(path))


def mask_suffix(names):
    """The suffix of the folder's mask files: _cp_masks if there is one such file, else _masks."""
    for suffix in SUFFIXES:
        if any(name.endswith(f"{suffix}.png") for name in names):
            return suffix
    return SUFFIXES[0]


class CellposePrediction(LabelFilePrediction):
    name = NAME

    def read_labels(self, path):
        return read_png(path, self.size, MODES)


def open_layout(path, patches, size, **options):
    names = listing(path)
    suffix = mask_suffix(names)
    masks = [name for name in names if name.endswith(f"{suffix}.png")]
    if not masks:
        tifs = [name for name in names if name.endswith("_cp_masks.tif")]
        if tifs:
            raise PredictionError(f"{path}: cellpose's {tifs[0]} is a TIFF: read it with --pred-format tiff")
        refused = [name for name in names if name.endswith("_seg.npy")]
        if refused:
            raise PredictionError(
                f"{path}: cellpose's {refused[0]} is not read (a pickle): predict with --save_png to write "
                "<name>_cp_masks.png (or --save_tif, read by --pred-format tiff)"
            )
    ending = f"{suffix}.png"
    prediction = CellposePrediction(path, patches, size, ending)
    for name in patch_files(path, [patch for patch, _ in prediction.patches], ending, "mask file(s)", required=False):
        check_png(os.path.join(path, name), prediction.size, MODES)
    return prediction
