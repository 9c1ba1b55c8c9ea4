"""`semantic`: <id>.png of classes 0..5 (nnU-Net v2's `NaturalImage2DIO.write_seg`, or any semantic model).

One class per pixel and no instances: the nuclei are the 8-connected components of each class, so nuclei of
one class that touch merge into one. 8-bit or 16-bit grey (nnU-Net), or a palette PNG whose indices are the
classes (the builder's semantic_mask).
"""

import os

import numpy as np

import pannuke_imagemask as pim

from .base import Prediction, PredictionError, check_ids, check_png, from_instances, listing, read_png

NAME = "semantic"
MODES = ("L", "I;16", "P")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
NOTE = (
    "semantic predictions: nuclei are the 8-connected components of each class, so touching nuclei of one class merge"
)


PATCH_FILE = ".png"


def recognise(path):
    return False  # no mark of its own: recognised by its <id>.png files


def semantic_instances(semantic, where):
    """(instance map, ids, types) of a class map: each class' 8-connected components, numbered class by class."""
    from scipy import ndimage  # here, not at the top: recognising another layout need not import it

    semantic = check_ids(semantic, where, "class map")
    if semantic.max(initial=0) > pim.NUM_CLASS_CHANNELS:
        raise PredictionError(f"{where}: class {semantic.max()} is not one of 0..{pim.NUM_CLASS_CHANNELS}")
    instance = np.zeros(semantic.shape, dtype=np.int32)
    types = []
    for kind in range(1, pim.NUM_CLASS_CHANNELS + 1):
        labels, count = ndimage.label(semantic == kind, structure=EIGHT_CONNECTED)
        inside = labels != 0
        instance[inside] = labels[inside] + len(types)
        types += [kind] * count
    return instance, np.arange(1, len(types) + 1), np.array(types, dtype=np.int64)


class SemanticPrediction(Prediction):
    name = NAME

    def read(self, position):
        path = os.path.join(self.path, f"{self.patch(position)}.png")
        instance, ids, types = semantic_instances(read_png(path, self.size, MODES), path)
        return from_instances(instance, ids, types, where=path)


def open_layout(path, patches, size, **options):
    prediction = SemanticPrediction(path, patches, size)
    names = {name for name in listing(path) if name.endswith(".png")}
    expected = [f"{patch}.png" for patch, _ in prediction.patches]
    missing = [name for name in expected if name not in names]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} prediction(s) missing, the first {missing[0]}")
    foreign = sorted(names - set(expected))
    if foreign:
        raise PredictionError(f"{path}: {len(foreign)} prediction(s) not in the split, the first {foreign[0]}")
    for name in expected:
        check_png(os.path.join(path, name), prediction.size, MODES)
    prediction.notes.append(NOTE)
    return prediction
