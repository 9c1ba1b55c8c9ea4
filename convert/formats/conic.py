"""conic: per split images.npy, labels.npy, types.npy, patch_info.csv and counts.csv, as CoNIC's data and
HoVer-NeXt's PanNuke training hold them.

images uint8 (N, 256, 256, 3) RGB; labels int32 (N, 256, 256, 2): channel 0 the builder's instance_mask
(0 background, 1..K), channel 1 its semantic_mask (0 background, 1..5 the classes); types `<U13` (the tissue
names, as PanNuke's own types.npy); patch_info.csv one column `patch_info` of our ids; counts.csv the nuclei
of each class per patch, one lowercase column per class (CoNIC's extract_patches.py writes `neutrophil`,
`epithelial`, ...; here `neoplastic` .. `epithelial`). Rows in the split's (fold, index) order.

With the folds config, the tree hover_next_train's `src/data_utils.py` `get_pannuke` reads:
`images/fold{i}/images.npy`, `images/fold{i}/types.npy`, `masks/fold{i}/labels.npy` (and the two tables
beside images.npy). Its own `convert_pannuke_to_conic.py` labels the connected components of all nucleus
pixels at once, which merges touching nuclei; these labels are the builder's (docs/formats.md#conic).

The two big arrays are filled in place by the workers (convert.files.Row), as pannuke's are.
"""

import numpy as np

import pannuke_imagemask as pim

from ..common import nuclei_per_class
from ..files import Npy, Row, Text
from ..images import decode, npy_bytes
from . import Format

LABEL_DTYPE = np.int32
COUNT_DIGITS = 4  # a PanNuke patch holds at most 289 nuclei: a count is at most 4 characters in the bound


def patch_labels(row):
    """(image uint8 (256, 256, 3), labels int32 (256, 256, 2)) of one builder row: the builder's own masks."""
    image = decode(row["image"]["bytes"])
    instance = decode(row["instance_mask"]["bytes"])
    semantic = decode(row["semantic_mask"]["bytes"])
    return image, np.stack([instance, semantic], axis=-1).astype(LABEL_DTYPE)


def counts_text(counts):
    """counts.csv: a header of the class names, then one row of nuclei per class per patch."""
    lines = [",".join(pim.NUCLEUS_CLASSES)] + [",".join(str(n) for n in row) for row in counts]
    return "".join(f"{line}\n" for line in lines)


class Conic(Format):
    def folders(self, split):
        """(folder of images.npy and the tables, folder of labels.npy): HoVer-NeXt's tree for the folds."""
        if split.startswith("fold"):
            return f"images/{split}", f"masks/{split}"
        folder = self.split_dir(split)
        return folder, folder

    def patch_files(self, split, position, row, options):
        images, masks = self.folders(split)
        count = options["rows"][split]
        image, labels = patch_labels(row)
        return [
            Row(f"{images}/images.npy", position, image, count, row["id"]),
            Row(f"{masks}/labels.npy", position, labels, count, row["id"]),
        ]

    def record(self, split, position, row, options):
        return nuclei_per_class([n["label"] for n in row["nuclei"]])

    def tree_files(self, dataset_dict, records, options):
        files = []
        for split, dataset in dataset_dict.items():
            images, _ = self.folders(split)
            types = np.array([pim.TISSUES[t] for t in dataset["tissue"]], dtype="<U13")
            files += [
                Npy(f"{images}/types.npy", types),
                Text(f"{images}/patch_info.csv", "".join(f"{i}\n" for i in ["patch_info", *dataset["id"]])),
                Text(f"{images}/counts.csv", counts_text(records[split])),
            ]
        return files

    def estimate(self, dataset_dict, options):
        sizes = []
        side = pim.PATCH_SIZE
        header = len(",".join(pim.NUCLEUS_CLASSES)) + 1
        for dataset in dataset_dict.values():
            n = dataset.num_rows
            sizes += [npy_bytes((n, side, side, 3), np.uint8), npy_bytes((n, side, side, 2), LABEL_DTYPE)]
            sizes += [npy_bytes((n,), "<U13"), len("patch_info\n") + 16 * n]
            sizes += [header + n * pim.NUM_CLASS_CHANNELS * (COUNT_DIGITS + 1)]
        return sizes


FORMAT = Conic()
