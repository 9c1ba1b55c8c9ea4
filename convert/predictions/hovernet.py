"""`hovernet`: a folder of <id>.npy, each (H, W, ..., instance, type), as HoVer-Net and its successors hold them."""

import os

import numpy as np

import pannuke_imagemask as pim

from .base import Prediction, PredictionError, check_dtype, hovernet_prediction, patch_files

NAME = "hovernet"


PATCH_FILE = ".npy"


def recognise(path):
    return False  # no mark of its own: recognised by its <id>.npy files


def check_prediction_folder(folder, ids, size):
    """Check that folder holds exactly one <id>.npy of shape (H, W, >=2) per id, before anything is scored."""
    patch_files(folder, ids, ".npy")
    for patch in ids:
        path = os.path.join(folder, f"{patch}.npy")
        shape, dtype = pim.read_npy_header(path)
        check_dtype(path, dtype)
        if len(shape) != 3 or shape[:2] != size or shape[2] < 2:
            raise PredictionError(
                f"{path}: prediction for {patch} has shape {shape}, expected ({size[0]}, {size[1]}, C) with "
                "instance and type as the last two channels"
            )


class HovernetPrediction(Prediction):
    name = NAME

    def read(self, position):
        path = os.path.join(self.path, f"{self.patch(position)}.npy")
        array = np.load(path, allow_pickle=False)
        return hovernet_prediction(array[..., -2], array[..., -1], where=path)


def open_layout(path, patches, size, **options):
    prediction = HovernetPrediction(path, patches, size)
    check_prediction_folder(path, [patch for patch, _ in prediction.patches], prediction.size)
    return prediction
