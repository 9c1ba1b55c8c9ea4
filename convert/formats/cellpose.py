"""cellpose: DIR/{split}/<id>.png (RGB) beside <id>_masks.png (16-bit instance map), as Cellpose trains on.

Cellpose (`cellpose --train`, `cellpose.io.load_train_test_data`) reads one folder per split and pairs
each image with the file named like it plus the mask filter (`_masks`, its default). The image is the
builder's PNG and the mask the builder's instance PNG, both copied byte for byte: 0 background, 1..K
the nuclei, uint16 (cv2.imread(path, -1) reads it as uint16). Cellpose is class-agnostic: the nucleus
classes are not written (any other image file in a split folder would be read as one more training
image). Training writes `<id>_flows.tif` beside each image and, from the command line, the model under
`<--dir>/models/`: verify accepts those and names every other unexpected file.
"""

from ..files import Png
from ..images import png_lengths
from . import Format

MASK_SUFFIX = "_masks"  # cellpose's default --mask_filter


class Cellpose(Format):
    # dynamics.labels_to_flows caches each image's flows as <image stem>_flows.tif; the CLI saves the
    # trained model in <--dir>/models/ (train.train_seg with save_path=--dir).
    consumer_files = ("*/*_flows.tif", "*/models/*")

    def patch_files(self, split, position, row, options):
        stem = f"{self.split_dir(split)}/{row['id']}"
        return [
            Png(f"{stem}.png", row["image"]["bytes"]),
            Png(f"{stem}{MASK_SUFFIX}.png", row["instance_mask"]["bytes"]),
        ]

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():  # both files are the builder's PNGs: their sizes are known
            sizes += png_lengths(dataset, "image") + png_lengths(dataset, "instance_mask")
        return sizes


FORMAT = Cellpose()
