"""`masks`: one masks.npy of (N, H, W, C >= 5) class channels in the split's row order, memory-mapped."""

import os

import numpy as np

import pannuke_imagemask as pim

from .base import PatchPrediction, Prediction, check_dtype, check_ids

NAME = "masks"
KEY_SPAN = 1 << 32  # (channel, id) keys: ids are at most int32's max


def recognise(path):
    return os.path.isfile(path) and path.endswith(".npy")


def open_masks_prediction(path, n, size):
    """Memory-map a masks.npy of (n, H, W, >=5) predictions, after checking its header."""
    shape, dtype = pim.read_npy_header(path)
    check_dtype(path, dtype)
    if len(shape) != 4 or shape[1:3] != size or shape[3] < pim.NUM_CLASS_CHANNELS:
        raise pim.PanNukeFormatError(
            f"{path}: shape {shape}, expected (N, {size[0]}, {size[1]}, C) with C >= {pim.NUM_CLASS_CHANNELS}"
        )
    if shape[0] != n:
        raise pim.PanNukeFormatError(f"{path}: {shape[0]} predictions, the split has {n} patches")
    return np.lib.format.open_memmap(path, mode="r")


def channel_nuclei(channels):
    """(centroids (N, 2) (x, y), types (N,)) of the nuclei of (H, W, 5) class channels, as the binary map sees them.

    Channels collapse as for bPQ and the builder's instance_mask: the later channel on top. Each (channel, id)
    pair with pixels on top is one nucleus of type channel + 1 at the mean (x, y) of those pixels, in
    (channel, id) order; a nucleus wholly covered is not one.
    """
    _, width, count = channels.shape
    flat = channels.reshape(-1)
    position = np.flatnonzero(flat)
    pixel, channel = np.divmod(position, count)
    top = np.ones(len(pixel), dtype=bool)  # positions run through a pixel's channels in order: the last is on top
    top[:-1] = pixel[1:] != pixel[:-1]
    position, pixel, channel = position[top], pixel[top], channel[top]
    keys, number = np.unique(channel * KEY_SPAN + flat[position].astype(np.int64), return_inverse=True)
    number = number.ravel()
    area = np.bincount(number, minlength=len(keys))
    rows, cols = np.divmod(pixel, width)
    x = np.bincount(number, weights=cols, minlength=len(keys)) / area
    y = np.bincount(number, weights=rows, minlength=len(keys)) / area
    return np.stack([x, y], axis=1), (keys // KEY_SPAN).astype(np.int64) + 1


class MasksPrediction(Prediction):
    name = NAME

    def read(self, position):
        array = self._cache.get("array")
        if array is None:
            array = self._cache["array"] = np.lib.format.open_memmap(self.path, mode="r")
        where = f"{self.path}: {self.patch(position)}"
        values = check_ids(array[position], where, channels=pim.NUM_CLASS_CHANNELS)
        if values.shape[-1] > pim.NUM_CLASS_CHANNELS:  # channels after 0..4 may hold anything: not read
            values = np.ascontiguousarray(values[..., : pim.NUM_CLASS_CHANNELS])
        # No points: evaluate takes the F1 nuclei from the binary map it builds for bPQ anyway, which are
        # channel_nuclei(values) (the interface allows it; it saves a pass over the patch).
        return PatchPrediction(values, None, None)


def open_layout(path, patches, size, **options):
    prediction = MasksPrediction(path, patches, size)
    open_masks_prediction(path, len(prediction), prediction.size)
    return prediction
