"""`tiff`: a label TIFF per patch, read with tifffile: InstanSeg, StarDist, cellpose, or any labels saved as TIFF.

Which writer is told by the file name, the first that some patch of the split has:
- `<id>_instanseg_prediction.tiff`: InstanSeg `InstanSeg.save_output` (instanseg/inference_class.py), int32,
  (H, W) for a nuclei model or (2, H, W) for a nuclei-and-cells model, whose channel 0 is the nuclei (read);
- `<id>.stardist.tif`: StarDist's `stardist-predict2d` (stardist/scripts/predict2d.py), int32 (H, W);
- `<id>_cp_masks.tif`: cellpose `--save_tif` (cellpose/io.py `save_masks`), uint16 or uint32 (H, W);
- `<id>.tif` or `<id>.tiff`: labels a user saved (csbdeep's `save_tiff_imagej_compatible`, tifffile, imageio).
0 is background, every other value one nucleus; no classes (class-agnostic: channel 0, type 0, as cellpose).

A missing file: cellpose writes none for an image without masks, so a missing `_cp_masks.tif` is a patch without
nuclei; InstanSeg and StarDist write a file for every image (all zeros when nothing was found), and a user's own
`<id>.tif` is written per patch, so a missing one of those is an error naming it.

Negative ids are refused: csbdeep's `save_tiff_imagej_compatible` stores int32 labels as int16, so ids from
32768 on wrap to negative numbers and two nuclei can share one; saving with `tifffile.imwrite` keeps int32.
"""

import os
import struct

from .base import LabelFilePrediction, PredictionError, listing, patch_files

NAME = "tiff"
# (file ending, writer, whether a missing file means no nuclei); the writers' own names first: a user's
# <id>.tif may be the image a writer ran on (cellpose and InstanSeg write beside their input).
WRITERS = (
    ("_instanseg_prediction.tiff", "InstanSeg", False),
    (".stardist.tif", "StarDist", False),
    ("_cp_masks.tif", "cellpose", True),
)
PLAIN = ((".tif", "label TIFF", False), (".tiff", "label TIFF", False))
PATCH_FILE = ".tif"
WRAP_NOTE = (
    "an int16 TIFF whose ids from 32768 wrapped (csbdeep's save_tiff_imagej_compatible stores int32 labels as "
    "int16): save the labels with tifffile.imwrite, which keeps int32"
)


def recognise(path):
    """A folder with a file of one of the writers' own names (plain <id>.tif files: by the split's ids)."""
    return os.path.isdir(path) and any(name.endswith(tuple(e for e, *_ in WRITERS)) for name in os.listdir(path))


def _tifffile():
    """(tifffile, what it raises for a damaged or foreign file): imported when a TIFF is read."""
    import tifffile

    return tifffile, (tifffile.TiffFileError, ValueError, struct.error, OSError, EOFError, KeyError, IndexError)


def _nuclei_page(tif, path, size):
    """The page of the nuclei label image of an open TIFF, its shape and dtype checked from the header.

    A label image is one (H, W) page; InstanSeg's (2, H, W) is two pages (tifffile's default) or one page of two planar
    samples, the nuclei first. Only the first page is decoded: 0.2 ms a file instead of tifffile's series.
    """
    page = tif.pages.first
    shape, dtype = tuple(page.shape), page.dtype
    if len(tif.pages) > 1:
        shape = (len(tif.pages), *shape)
    if dtype is None or dtype.kind not in "iu":
        raise PredictionError(f"{path}: dtype {dtype}, expected integer labels (0 background, 1.. the nuclei)")
    if shape not in (tuple(size), (2, *size)):
        raise PredictionError(
            f"{path}: shape {shape}, expected a {size[0]}x{size[1]} label image ({size[0]}, {size[1]}) or "
            f"InstanSeg's nuclei and cells (2, {size[0]}, {size[1]})"
        )
    return page


def read_labels(path, size, pixels=True):
    """The nuclei label image of a TIFF (the image, or channel 0 of InstanSeg's (2, H, W)); only checked if not
    pixels."""
    tifffile, errors = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            page = _nuclei_page(tif, path, size)
            if not pixels:
                return None
            labels = page.asarray()
    except PredictionError:
        raise
    except errors as exc:
        raise PredictionError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    labels = labels[0] if labels.ndim == 3 else labels
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise PredictionError(f"{path}: negative ids (min {labels.min()}): {WRAP_NOTE}")
    return labels


def writer_of(folder, patch_ids):
    """(ending, writer, missing means empty) of the folder's label TIFFs: the writers' names, then plain ones."""
    names = set(listing(folder))
    present = [w for w in WRITERS if any(f"{patch}{w[0]}" in names for patch in patch_ids)]
    if len(present) > 1:
        found = " and ".join(f"{writer} (<id>{ending})" for ending, writer, _ in present)
        raise PredictionError(f"{folder}: label TIFFs of {found}; keep one writer's files in the folder")
    if present:
        return present[0]
    present = [w for w in PLAIN if any(f"{patch}{w[0]}" in names for patch in patch_ids)]
    if len(present) > 1:
        raise PredictionError(f"{folder}: both <id>.tif and <id>.tiff files; keep one of them per patch")
    if not present:
        raise PredictionError(
            f"{folder}: no label TIFF of the split's patches (<id>.tif, <id>.tiff, <id>_instanseg_prediction.tiff, "
            "<id>.stardist.tif or <id>_cp_masks.tif)"
        )
    return present[0]


class TiffPrediction(LabelFilePrediction):
    name = NAME

    def read_labels(self, path):
        return read_labels(path, self.size)


def open_layout(path, patches, size, **options):
    if not os.path.isdir(path):
        raise PredictionError(f"{path}: the tiff layout is a folder of <id>.tif label images, not a file")
    ids = [str(patch) for patch, _ in patches]
    ending, writer, missing_is_empty = writer_of(path, ids)
    prediction = TiffPrediction(path, patches, size, ending)
    for name in patch_files(path, ids, ending, f"{writer} file(s)", required=not missing_is_empty):
        read_labels(os.path.join(path, name), prediction.size, pixels=False)
    if missing_is_empty:
        prediction.notes.append(f"tiff: a patch without {ending} has no nuclei (cellpose writes none then)")
    return prediction
