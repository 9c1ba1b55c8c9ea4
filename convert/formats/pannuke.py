"""pannuke: per split DIR/{split}/images.npy, masks.npy, types.npy and ids.txt, as an official fold.

images float64 (N, 256, 256, 3) RGB 0..255; masks float64 (N, 256, 256, 6); types `<U13`; rows in the
split's (fold, index) order, listed in ids.txt. Mask channel c (0..4) holds, where the builder's
semantic mask is class c + 1, the builder's instance id (1..K, unique over the channels), 0 elsewhere:
the overlap rule is applied, and the source ids cannot be kept after it. Channel 5 is 1 where there is
no nucleus. The official metrics code and the usual preparation scripts read a split like a fold.

A split's images.npy and masks.npy are each one file that all its patches fill: each patch describes
its rows (convert.files.Row), which the workers write in place into the file made beforehand.
"""

import numpy as np

import pannuke_imagemask as pim

from ..files import Npy, Row, Text
from ..images import decode, npy_bytes
from . import Format


def patch_arrays(row):
    """(image float64 (256, 256, 3), mask float64 (256, 256, 6)) of one builder row."""
    image = decode(row["image"]["bytes"]).astype(np.float64)
    semantic = decode(row["semantic_mask"]["bytes"])
    instance = decode(row["instance_mask"]["bytes"])
    mask = np.zeros(semantic.shape + (pim.NUM_CLASS_CHANNELS + 1,), dtype=np.float64)
    for c in range(pim.NUM_CLASS_CHANNELS):
        mask[..., c] = np.where(semantic == c + 1, instance, 0)
    mask[..., pim.NUM_CLASS_CHANNELS] = instance == 0
    return image, mask


class PanNuke(Format):
    def patch_files(self, split, position, row, options):
        folder, count = self.split_dir(split), options["rows"][split]
        image, mask = patch_arrays(row)
        return [
            Row(f"{folder}/images.npy", position, image, count, row["id"]),
            Row(f"{folder}/masks.npy", position, mask, count, row["id"]),
        ]

    def tree_files(self, dataset_dict, records, options):
        files = []
        for split, dataset in dataset_dict.items():
            folder = self.split_dir(split)
            types = np.array([pim.TISSUES[t] for t in dataset["tissue"]], dtype="<U13")
            files += [
                Npy(f"{folder}/types.npy", types),
                Text(f"{folder}/ids.txt", "".join(f"{i}\n" for i in dataset["id"])),
            ]
        return files

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            n = dataset.num_rows
            side = pim.PATCH_SIZE
            sizes += [npy_bytes((n, side, side, 3), np.float64), npy_bytes((n, side, side, 6), np.float64)]
            sizes += [npy_bytes((n,), "<U13"), 16 * n]
        return sizes


FORMAT = PanNuke()
