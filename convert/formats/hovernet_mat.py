"""hovernet-mat: DIR/{split}/Images/<id>.png and DIR/{split}/Labels/<id>.mat, CoNSeP's layout of HoVer-Net's truth.

Each .mat (scipy.io.savemat, MATLAB 5, compressed) holds what HoVer-Net's code reads of a CoNSeP label
(vqdang/hover_net: compute_stats.py `run_nuclei_type_stat` reads `inst_centroid` and `inst_type` of the true
folder and casts them to float32 and int32, `run_nuclei_inst_stat` reads `inst_map` as int32;
dataset.py `__CoNSeP.load_ann` reads `inst_map` and `type_map`):

- `inst_map` (H, W) int32: the builder's instance ids, 0 background, 1..K;
- `type_map` (H, W) int32: the builder's classes, 0 background, 1..5 (neoplastic .. epithelial);
- `inst_type` (K, 1) int32: the class 1..5 of nucleus 1..K, in id order;
- `inst_centroid` (K, 2) float64: the (x, y) of nucleus 1..K, x the column: the mean of its pixels (HoVer-Net's
  image moments m10/m00, m01/m00).

A patch without nuclei has inst_type (0, 1) and inst_centroid (0, 2), which compute_stats.py reads as "no
instance at all". The file's text header names this tool instead of the time, so that an export is the same
bytes each time it is written.
"""

import io

import numpy as np
import pyarrow.compute as pc
import scipy.io

import pannuke_imagemask as pim

from ..files import Checked, Png
from ..images import decode, png_lengths
from . import Format

KEYS = ("inst_map", "type_map", "inst_type", "inst_centroid")
HEADER_TEXT = 116  # MAT 5's descriptive text: its first 116 bytes, the rest of the header is binary
DESCRIPTION = b"MATLAB 5.0 MAT-file, written by pannuke-imagemask (export --format hovernet-mat)"
# savemat's framing and variable headers, beside the compressed maps: far less than this.
MAT_OVERHEAD = 4096


def label_arrays(instance, semantic):
    """{key: array} of one patch's label from its instance and semantic maps (ids 1..K, every one present)."""
    instance = instance.astype(np.int32)
    count = int(instance.max(initial=0))
    rows, cols = np.nonzero(instance)
    ids = instance[rows, cols].astype(np.int64)
    area = np.bincount(ids, minlength=count + 1)[1:]
    x = np.bincount(ids, weights=cols, minlength=count + 1)[1:] / np.maximum(area, 1)
    y = np.bincount(ids, weights=rows, minlength=count + 1)[1:] / np.maximum(area, 1)
    types = np.zeros(count + 1, dtype=np.int32)
    types[ids] = semantic[rows, cols]
    return {
        "inst_map": instance,
        "type_map": semantic.astype(np.int32),
        "inst_type": types[1:].reshape(-1, 1),
        "inst_centroid": np.stack([x, y], axis=1).reshape(-1, 2),
    }


def mat_bytes(arrays):
    """The .mat file of the arrays, its header text fixed (savemat writes the time there)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays, do_compression=True)
    data = bytearray(buffer.getvalue())
    data[:HEADER_TEXT] = DESCRIPTION.ljust(HEADER_TEXT, b" ")
    return bytes(data)


def mat_problems(expected):
    """The check of a .mat file's bytes against the expected arrays (dtype, shape and every value)."""

    def check(data):
        try:
            found = scipy.io.loadmat(io.BytesIO(data))
        except Exception:  # noqa: BLE001  (scipy raises many types on damaged data; all mean the same)
            return ["is not a readable .mat file"]
        names = sorted(key for key in found if not key.startswith("__"))
        if names != sorted(KEYS):
            return [f"holds {', '.join(names) or 'no variables'}, expected {', '.join(sorted(KEYS))}"]
        problems = []
        for key in KEYS:
            actual, wanted = found[key], expected[key]
            if actual.dtype != wanted.dtype or actual.shape != wanted.shape:
                problems.append(f"{key} is {actual.dtype} {actual.shape}, expected {wanted.dtype} {wanted.shape}")
                continue
            wrong = int((actual != wanted).sum())
            if wrong:
                problems.append(f"{key}: {wrong} of {wanted.size} values differ")
        return problems

    return check


class HovernetMat(Format):
    def patch_files(self, split, position, row, options):
        folder = self.split_dir(split)
        arrays = label_arrays(decode(row["instance_mask"]["bytes"]), decode(row["semantic_mask"]["bytes"]))
        return [
            Png(f"{folder}/Images/{row['id']}.png", row["image"]["bytes"]),
            Checked(f"{folder}/Labels/{row['id']}.mat", (mat_bytes(arrays),), mat_problems(arrays)),
        ]

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += png_lengths(dataset, "image")
            nuclei = pc.list_value_length(dataset.data.table.column("nuclei")).to_numpy(zero_copy_only=False)
            # zlib's output never exceeds its input by more than 0.1 % and a few bytes: the raw arrays bound it.
            raw = 2 * 4 * pim.PATCH_SIZE**2 + (4 + 2 * 8) * np.asarray(nuclei, dtype=np.int64)
            sizes += (raw + raw // 1000 + MAT_OVERHEAD).tolist()
        return sizes


FORMAT = HovernetMat()
