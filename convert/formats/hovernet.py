"""hovernet: DIR/{split}/<id>.npy, int32 (256, 256, 5) = R, G, B, instance id, type; DIR/type_info.json.

The layout HoVer-Net's training loader (and CellViT's) reads: channels 0..2 the RGB image, 3 the
builder's instance ids (0 background, 1..K), 4 the type, i.e. the semantic class (0 background, 1..5).
"""

import numpy as np

import pannuke_imagemask as pim

from ..files import Json, Npy
from ..images import decode, npy_bytes
from . import Format

SHAPE = (pim.PATCH_SIZE, pim.PATCH_SIZE, 5)
DTYPE = np.int32
# HoVer-Net's type_info.json: "type id": [name, [R, G, B]], the colours of the colour masks.
TYPE_INFO = {
    str(k): [name, [int(v) for v in pim.CLASS_COLORS[k]]] for k, name in enumerate(["background", *pim.NUCLEUS_CLASSES])
}


def patch_array(row):
    """R, G, B, instance, type as one int32 array, filled in place (no stacking, no second cast)."""
    array = np.empty(SHAPE, dtype=DTYPE)
    array[..., :3] = decode(row["image"]["bytes"])
    array[..., 3] = decode(row["instance_mask"]["bytes"])
    array[..., 4] = decode(row["semantic_mask"]["bytes"])
    return array


class HoverNet(Format):
    def patch_files(self, split, position, row, options):
        return [Npy(f"{self.split_dir(split)}/{row['id']}.npy", patch_array(row))]

    def tree_files(self, dataset_dict, records, options):
        return [Json("type_info.json", TYPE_INFO)]

    def estimate(self, dataset_dict, options):
        rows = sum(ds.num_rows for ds in dataset_dict.values())
        return [npy_bytes(SHAPE, DTYPE)] * rows + [4096]  # and type_info.json


FORMAT = HoverNet()
