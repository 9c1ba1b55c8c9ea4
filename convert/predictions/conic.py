"""`conic`: one .npy of (N, H, W, 2) integer labels in the split's row order, channel 0 the instance ids and
channel 1 the class of each pixel (0 background, 1..5 our classes), memory-mapped.

The layout of the CoNIC challenge (TissueImageAnalytics/CoNIC `extract_patches.py` writes labels.npy as
uint16 (N, 256, 256, 2); its `compute_stats.py` scores a prediction of the same shape), of HoVer-NeXt's
PanNuke labels (hover_next_train `convert_pannuke_to_conic.py`, int64) and of our `conic` export (int32).
Each nucleus gets the class most of its pixels have, ties to the lower class, as the `hovernet` layout
(base.majority_types); a nucleus whose pixels are mostly class 0 counts for detection F1 only, with no class.
"""

import os

import numpy as np

import pannuke_imagemask as pim

from .base import Prediction, PredictionError, hovernet_prediction

NAME = "conic"
CHANNELS = 2


def _header(path):
    """(shape, dtype) of the .npy at path, or None if it is not a readable .npy."""
    try:
        return pim.read_npy_header(path)
    except ValueError:
        return None


def recognise(path):
    """A .npy file whose header says (N, H, W, 2): masks.npy's class channels are 5 or more."""
    if not (os.path.isfile(path) and path.endswith(".npy")):
        return False
    header = _header(path)
    return header is not None and len(header[0]) == 4 and header[0][3] == CHANNELS


def check_labels(path, n, size):
    """Check the header of a CoNIC labels.npy: n rows of size, two channels, integers."""
    shape, dtype = pim.read_npy_header(path)
    if dtype.kind not in "iu":
        raise PredictionError(f"{path}: dtype {dtype}, expected integers (instance ids and classes)")
    if len(shape) != 4 or shape[1:] != (*size, CHANNELS):
        raise PredictionError(
            f"{path}: shape {shape}, expected (N, {size[0]}, {size[1]}, 2): instance ids, then classes 0..5"
        )
    if shape[0] != n:
        raise PredictionError(f"{path}: {shape[0]} predictions, the split has {n} patches")


class ConicPrediction(Prediction):
    name = NAME

    def read(self, position):
        array = self._cache.get("array")
        if array is None:
            array = self._cache["array"] = np.load(self.path, mmap_mode="r", allow_pickle=False)
        labels = np.asarray(array[position])
        return hovernet_prediction(labels[..., 0], labels[..., 1], where=f"{self.path}: {self.patch(position)}")


def open_layout(path, patches, size, **options):
    prediction = ConicPrediction(path, patches, size)
    check_labels(path, len(prediction), prediction.size)
    return prediction
