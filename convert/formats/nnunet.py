"""nnunet: an nnU-Net v2 raw dataset, imagesTr/<id>_0000.png, labelsTr/<id>.png, dataset.json, splits_final.json.

The export folder is the dataset folder itself: nnU-Net finds a dataset by its folder name
`Dataset<NNN>_<Name>` under $nnUNet_raw, so export to (or rename the tree to) e.g.
$nnUNet_raw/Dataset500_PanNuke (nnU-Net asks for custom ids from 500 up).

Natural-image conventions of nnU-Net (NaturalImage2DIO, chosen for the file ending .png): one RGB PNG
carries the three channels (`_0000`, channel_names R, G, B as its Dataset120_RoadSegmentation); a
label is a single-channel 8-bit PNG of the classes 0..5, never a palette PNG (skimage expands a
palette to RGB). train and validation go to imagesTr/labelsTr, test to imagesTs/labelsTs (as nnU-Net's
own converters do; labelsTs is for nnUNetv2_evaluate_folder). splits_final.json entry 0 is our
train/validation split. With the folds config all three folds are in imagesTr/labelsTr, and entries
0, 1, 2 are the official protocol's splits 1, 2, 3 (their test folds: fold3, fold3, fold1).
"""

import os
import re

import pannuke_imagemask as pim

from ..files import Json, Png
from ..images import decode, png_bound, png_lengths
from . import FOLD_PROTOCOL, Format

FILE_ENDING = ".png"
TEST_SPLITS = ("test",)  # everything else (train, validation, fold1..3) is a training case of nnU-Net
SUGGESTED_NAME = "Dataset500_PanNuke"
DATASET_FOLDER = re.compile(r"^Dataset\d{3}_.+$")  # how nnU-Net names (and parses the id of) a dataset folder
SPLIT_ID_BYTES = 40  # an id in splits_final.json: "fold1_00042", quotes, comma, newline and indent, with room


def dataset_json(num_training):
    """The content of dataset.json: the keys verify_dataset_integrity requires, then what only informs."""
    return {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, **{name: k + 1 for k, name in enumerate(pim.NUCLEUS_CLASSES)}},
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "name": "PanNuke",
        "licence": pim._LICENSE,
        "reference": pim._HOMEPAGE,
    }


def splits_final(ids_by_split):
    """nnU-Net's list of {"train": [...], "val": [...]}: ours, or the official protocol's three with the folds."""
    if set(ids_by_split) == {"fold1", "fold2", "fold3"}:
        return [{"train": ids_by_split[train], "val": ids_by_split[val]} for train, val, _ in FOLD_PROTOCOL.values()]
    return [{"train": ids_by_split.get("train", []), "val": ids_by_split.get("validation", [])}]


def label_png(row):
    """The label file: the builder's semantic classes as a single-channel (L) PNG, not its palette PNG."""
    return pim.encode_png(decode(row["semantic_mask"]["bytes"]))


class NnUNet(Format):
    @staticmethod
    def folders(split):
        """(images folder, labels folder) of a split: nnU-Net's test folders for the test split, else training."""
        return ("imagesTs", "labelsTs") if split in TEST_SPLITS else ("imagesTr", "labelsTr")

    def patch_files(self, split, position, row, options):
        images, labels = self.folders(split)
        return [
            Png(f"{images}/{row['id']}_0000{FILE_ENDING}", row["image"]["bytes"]),  # already an 8-bit RGB PNG
            Png(f"{labels}/{row['id']}{FILE_ENDING}", label_png(row)),
        ]

    def tree_files(self, dataset_dict, records, options):
        training = sum(ds.num_rows for split, ds in dataset_dict.items() if split not in TEST_SPLITS)
        ids = {split: list(ds["id"]) for split, ds in dataset_dict.items()}
        return [Json("dataset.json", dataset_json(training)), Json("splits_final.json", splits_final(ids))]

    def advice(self, out):
        if DATASET_FOLDER.match(os.path.basename(out)):
            return []
        where = "nnU-Net finds a dataset by its folder name Dataset<NNN>_<Name> under $nnUNet_raw"
        return [f"{where}: move {out} to e.g. $nnUNet_raw/{SUGGESTED_NAME}"]

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += png_lengths(dataset, "image")  # copied as they are
            sizes += [png_bound(pim.PATCH_SIZE, pim.PATCH_SIZE)] * dataset.num_rows
        rows = sum(ds.num_rows for ds in dataset_dict.values())
        # splits_final.json names an id at most three times (the folds protocol); dataset.json is small.
        return sizes + [3 * SPLIT_ID_BYTES * rows + 4096, 4096]


FORMAT = NnUNet()
