"""`masks`: one masks.npy of (N, H, W, C >= 5) class channels in the split's row order, memory-mapped."""

import os

import numpy as np

import pannuke_imagemask as pim

from .base import PatchPrediction, Prediction, PredictionError, check_dtype, check_ids

NAME = "masks"


def recognise(path):
    return os.path.isfile(path) and path.endswith(".npy")


def open_masks_prediction(path, n, size):
    """Memory-map a masks.npy of (n, H, W, >=5) predictions, after checking its header."""
    shape, dtype = pim.read_npy_header(path)
    check_dtype(path, dtype)
    if len(shape) != 4 or shape[1:3] != size or shape[3] < pim.NUM_CLASS_CHANNELS:
        raise PredictionError(
            f"{path}: shape {shape}, expected (N, {size[0]}, {size[1]}, C) with C >= {pim.NUM_CLASS_CHANNELS}"
        )
    if shape[0] != n:
        raise PredictionError(f"{path}: {shape[0]} predictions, the split has {n} patches")
    return np.lib.format.open_memmap(path, mode="r")


class MasksPrediction(Prediction):
    name = NAME

    def read(self, position):
        array = self._cache.get("array")
        if array is None:
            array = self._cache["array"] = np.lib.format.open_memmap(self.path, mode="r")
        where = f"{self.path}: {self.patch(position)}"
        # Channels after 0..4 (the official layout's background) may hold anything and are never read: the
        # matching counts the first five (panoptic.nuclei), so the checked array is handed on whole, uncopied.
        values = check_ids(array[position], where, channels=pim.NUM_CLASS_CHANNELS)
        # No points: evaluate takes the F1 nuclei from the binary map it builds for bPQ anyway, which are
        # its nuclei (the interface allows it; it saves a pass over the patch).
        return PatchPrediction(values, None, None)


def open_layout(path, patches, size, **options):
    prediction = MasksPrediction(path, patches, size)
    open_masks_prediction(path, len(prediction), prediction.size)
    return prediction
