"""hovernet: DIR/{split}/<id>.npy, int32 (256, 256, 5) = R, G, B, instance id, type; DIR/type_info.json.

The layout HoVer-Net's training loader (and CellViT's) reads: channels 0..2 the RGB image, 3 the
builder's instance ids (0 background, 1..K), 4 the type, i.e. the semantic class (0 background, 1..5).
"""

import io
import json
import os

import numpy as np

import pannuke_imagemask as pim

from . import Format, decode, list_files, npy_bytes, undecoded, write_bytes

SHAPE = (256, 256, 5)
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


def npy_chunks(array):
    """The .npy file of a C-contiguous array as (header, data): written as they are, without a joined copy."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue(), memoryview(array).cast("B")


class HoverNet(Format):
    name = "hovernet"

    def path(self, split, patch_id):
        return f"{self.split_dir(split)}/{patch_id}.npy"

    def prepare(self, root, dataset_dict, options):
        for split in dataset_dict:
            os.makedirs(os.path.join(root, self.split_dir(split)), exist_ok=True)

    def write_patch(self, root, split, position, row, options):
        write_bytes(os.path.join(root, self.path(split, row["id"])), *npy_chunks(patch_array(row)))

    def finish(self, root, dataset_dict, options, out, records):
        write_bytes(os.path.join(root, "type_info.json"), (json.dumps(TYPE_INFO, indent=2) + "\n").encode())

    def estimate(self, dataset_dict, options):
        rows = sum(ds.num_rows for ds in dataset_dict.values())
        return [npy_bytes(SHAPE, DTYPE)] * rows + [4096]  # and type_info.json

    def verify(self, root, dataset_dict, manifest, progress=None):
        expected = {self.path(split, i) for split, ds in dataset_dict.items() for i in ds["id"]}
        actual = list_files(root)
        problems = self.file_problems(expected, actual)
        for split, dataset in dataset_dict.items():
            for row in undecoded(dataset):
                path = self.path(split, row["id"])
                if path in actual:
                    problem = compare_array(os.path.join(root, path), patch_array(row))
                    if problem:
                        problems.append(f"{path}: {problem}")
                if progress:
                    progress(1)
        try:
            with open(os.path.join(root, "type_info.json")) as f:
                if json.load(f) != TYPE_INFO:
                    problems.append("type_info.json: differs")
        except (OSError, ValueError) as exc:
            problems.append(f"type_info.json: cannot be read ({exc})")
        return problems


def compare_array(path, expected):
    """None if the .npy at path holds exactly expected (dtype, shape, values), else what differs."""
    try:
        actual = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"cannot be read as an array ({exc})"
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return f"is {actual.dtype} {actual.shape}, expected {expected.dtype} {expected.shape}"
    wrong = int((actual != expected).sum())
    return None if wrong == 0 else f"{wrong} of {expected.size} values differ"


FORMAT = HoverNet()
