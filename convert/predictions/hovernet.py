"""`hovernet`: a folder of <id>.npy, each (H, W, ..., instance, type), as HoVer-Net and its successors hold them."""

import os

import numpy as np

import pannuke_imagemask as pim

from .base import Prediction, check_dtype, hovernet_prediction

NAME = "hovernet"


PATCH_FILE = ".npy"


def recognise(path):
    return False  # no mark of its own: recognised by its <id>.npy files


def check_prediction_folder(folder, ids, size):
    """Check that folder holds exactly one <id>.npy of shape (H, W, >=2) per id, before anything is scored."""
    names = {name for name in os.listdir(folder) if name.endswith(".npy") and not name.startswith(".")}
    expected = {f"{patch}.npy" for patch in ids}
    missing = [f"{patch}.npy" for patch in ids if f"{patch}.npy" not in names]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} prediction(s) missing, the first {missing[0]}")
    extra = sorted(names - expected)
    if extra:
        raise ValueError(f"{folder}: {len(extra)} prediction(s) not in the split, the first {extra[0]}")
    for patch in ids:
        path = os.path.join(folder, f"{patch}.npy")
        shape, dtype = pim.read_npy_header(path)
        check_dtype(path, dtype)
        if len(shape) != 3 or shape[:2] != size or shape[2] < 2:
            raise pim.PanNukeFormatError(
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
