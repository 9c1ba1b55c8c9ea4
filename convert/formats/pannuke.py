"""pannuke: per split DIR/{split}/images.npy, masks.npy, types.npy and ids.txt, as an official fold.

images float64 (N, 256, 256, 3) RGB 0..255; masks float64 (N, 256, 256, 6); types `<U13`; rows in the
split's (fold, index) order, listed in ids.txt. Mask channel c (0..4) holds, where the builder's
semantic mask is class c + 1, the builder's instance id (1..K, unique over the channels), 0 elsewhere:
the overlap rule is applied, and the source ids cannot be kept after it. Channel 5 is 1 where there is
no nucleus. The official metrics code and the usual preparation scripts read a split like a fold.
"""

import os

import numpy as np

import pannuke_imagemask as pim

from . import Format, decode, list_files, npy_bytes, undecoded, write_bytes

SIDE = 256
FILES = ("images.npy", "masks.npy", "types.npy", "ids.txt")


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


def _create(path, shape):
    """An .npy of that shape, its space reserved now, so that running out shows as an error here, not later
    as a SIGBUS in a worker writing through the memory map."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=shape)
    del array
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
            except OSError as exc:  # it names no file: name it, for the one-line message
                raise OSError(exc.errno, exc.strerror, path) from None


class PanNuke(Format):
    name = "pannuke"

    def prepare(self, root, dataset_dict, options):
        for split, dataset in dataset_dict.items():
            folder = os.path.join(root, self.split_dir(split))
            os.makedirs(folder, exist_ok=True)
            _create(os.path.join(folder, "images.npy"), (dataset.num_rows, SIDE, SIDE, 3))
            _create(os.path.join(folder, "masks.npy"), (dataset.num_rows, SIDE, SIDE, pim.NUM_CLASS_CHANNELS + 1))

    def write_patch(self, root, split, position, row, options):
        image, mask = patch_arrays(row)
        folder = os.path.join(root, self.split_dir(split))
        for name, value in (("images.npy", image), ("masks.npy", mask)):
            array = np.lib.format.open_memmap(os.path.join(folder, name), mode="r+")
            array[position] = value
            array.flush()
            del array

    def finish_split(self, root, split, records, dataset, options):
        folder = os.path.join(root, self.split_dir(split))
        np.save(os.path.join(folder, "types.npy"), expected_types(dataset), allow_pickle=False)
        write_bytes(os.path.join(folder, "ids.txt"), "".join(f"{i}\n" for i in dataset["id"]).encode())

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            n = dataset.num_rows
            sizes += [npy_bytes((n, SIDE, SIDE, 3), np.float64), npy_bytes((n, SIDE, SIDE, 6), np.float64)]
            sizes += [npy_bytes((n,), "<U13"), 16 * n]
        return sizes

    def verify(self, root, dataset_dict, manifest, progress=None):
        expected = {f"{self.split_dir(split)}/{name}" for split in dataset_dict for name in FILES}
        actual = list_files(root)
        problems = self.file_problems(expected, actual)
        for split, dataset in dataset_dict.items():
            folder = self.split_dir(split)
            arrays = {}
            for name, trailing in (("images.npy", 3), ("masks.npy", 6)):
                if f"{folder}/{name}" not in actual:
                    continue
                try:
                    array = np.load(os.path.join(root, folder, name), mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    problems.append(f"{folder}/{name}: cannot be read as an array ({exc})")
                    continue
                shape = (dataset.num_rows, SIDE, SIDE, trailing)
                if array.dtype != np.float64 or array.shape != shape:
                    problems.append(f"{folder}/{name}: is {array.dtype} {array.shape}, expected float64 {shape}")
                    continue
                arrays[name] = array
            for position, row in enumerate(undecoded(dataset)):
                for name, value in zip(("images.npy", "masks.npy"), patch_arrays(row)):
                    if name in arrays:
                        wrong = int((arrays[name][position] != value).sum())
                        if wrong:
                            problems.append(f"{folder}/{name}: row {position} ({row['id']}): {wrong} values differ")
                if progress:
                    progress(1)
            problems += self._list_problems(root, folder, dataset, actual)
        return problems

    def _list_problems(self, root, folder, dataset, actual):
        problems = []
        if f"{folder}/types.npy" in actual:
            try:
                types = np.load(os.path.join(root, folder, "types.npy"), allow_pickle=False)
            except (OSError, ValueError) as exc:
                types = None
                problems.append(f"{folder}/types.npy: cannot be read as an array ({exc})")
            expected = expected_types(dataset)
            if types is not None and (types.dtype != expected.dtype or types.tolist() != expected.tolist()):
                problems.append(f"{folder}/types.npy: differs from the split's tissues")
        if f"{folder}/ids.txt" in actual:
            with open(os.path.join(root, folder, "ids.txt")) as f:
                if f.read().split("\n") != [*dataset["id"], ""]:
                    problems.append(f"{folder}/ids.txt: differs from the split's ids in order")
        return problems


def expected_types(dataset):
    return np.array([pim.TISSUES[t] for t in dataset["tissue"]], dtype="<U13")


FORMAT = PanNuke()
