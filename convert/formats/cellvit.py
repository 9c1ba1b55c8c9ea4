"""cellvit: the PanNuke layout CellViT and CellViT++ train from (their PanNukeDataset), fold by fold.

DIR/dataset_config.yaml, DIR/weight_config.yaml and per fold folder k (0, 1, 2):
  fold{k}/images/{k}_{i}.png   the RGB patch (the builder's PNG, copied);
  fold{k}/labels/{k}_{i}.npy   np.save of {"inst_map": int32 (256, 256), "type_map": int32 (256, 256)};
  fold{k}/types.csv            img,type (tissue) in i order;
  fold{k}/cell_count.csv       Image,Neoplastic,Inflammatory,Connective,Dead,Epithelial, image names sorted;
  fold{k}/ids.csv              img,id: our patch id of each file (CellViT reads no such file; it is ours).
Folders: --config folds puts official fold N in fold{N-1} with i the patch's index in the fold, the names
CellViT's prepare_pannuke.py gives; part1/all put train, validation, test in fold0, fold1, fold2 with i
the position in the split, so that train_folds [0], val_folds [1], test_folds [2] trains on our splits.

A label file is an object .npy, a pickle. It is written byte for byte as numpy 1.x's np.save writes that
dict (protocol 3, numpy.core.multiarray._reconstruct): numpy 2's np.save would name numpy._core, which
numpy < 2 cannot import, and CellViT pins numpy < 1.24; numpy 2 still reads the 1.x names. verify never
unpickles: it accepts only this exact byte layout and reads the two arrays out of it.
Labels are int32 always; CellViT's own script leaves inst_map float64 on a patch without nuclei (its loader
casts both maps to int32, so it reads the same values).
"""

import pickle
import pickletools
import struct
from collections import Counter
from typing import ClassVar

import numpy as np

import pannuke_imagemask as pim
from pannuke_imagemask import PATCH_SIZE

from ..common import nuclei_per_class
from ..files import Checked, Png, Text
from ..images import decode, png_lengths
from . import Format

FOLD_OF_SPLIT = {"train": 0, "validation": 1, "test": 2, "fold1": 0, "fold2": 1, "fold3": 2}
# CellViT's names, written out as its configs/datasets/PanNuke files spell them.
NUCLEI_TYPES = ["Background", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]
CSV_ROW_BOUND = 64  # bytes per CSV row: names under 16 characters, counts under 6 digits
YAML_BOUND = 4096

# --- the label file -------------------------------------------------------------------------------------
# The .npy header of a 0-d object array, as np.save writes it (format 1.0, padded to 128 bytes).
NPY_HEADER = b"\x93NUMPY\x01\x00v\x00" + b"{'descr': '|O', 'fortran_order': False, 'shape': (), }".ljust(117) + b"\n"
ARRAY_BYTES = PATCH_SIZE * PATCH_SIZE * 4


def _put(n):
    return pickle.BINPUT + bytes([n])


def _get(n):
    return pickle.BINGET + bytes([n])


def _text(s):
    return pickle.BINUNICODE + struct.pack("<I", len(s)) + s.encode()


def _int1(v):
    return pickle.BININT1 + bytes([v])


_MINUS_ONE_TWICE = (pickle.BININT + struct.pack("<i", -1)) * 2


def _array_head(key, first):
    """Opcodes from the dict key to the array's raw bytes: _reconstruct(ndarray, (0,), b'b') then its state
    (1, (256, 256), dtype('<i4'), False, data). numpy's pickler memoizes as it goes; the int32 dtype of the
    second array is the first one's (memo 21), so only the first spells it out."""
    base = 14 if first else 26
    head = _text(key) + _put(base) + _get(0) + _get(1) + _int1(0) + pickle.TUPLE1 + _put(base + 1)
    head += _get(3) + pickle.TUPLE3 + _put(base + 2) + pickle.REDUCE + _put(base + 3) + pickle.MARK + _int1(1)
    head += (pickle.BININT2 + struct.pack("<H", PATCH_SIZE)) * 2 + pickle.TUPLE2 + _put(base + 4)
    if first:
        head += _get(6) + _text("i4") + _put(19) + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE3 + _put(20)
        head += pickle.REDUCE + _put(21) + pickle.MARK + _int1(3) + _text("<") + _put(22) + pickle.NONE * 3
        head += _MINUS_ONE_TWICE + _int1(0) + pickle.TUPLE + _put(23) + pickle.BUILD
    else:
        head += _get(21)
    return head + pickle.NEWFALSE + pickle.BINBYTES + struct.pack("<I", ARRAY_BYTES)


def _array_tail(first):
    base = 24 if first else 31
    return _put(base) + pickle.TUPLE + _put(base + 1) + pickle.BUILD


# The 0-d object array: _reconstruct(ndarray, (0,), b'b'), state (1, (), dtype('O'), False, [dict]).
LABEL_PREFIX = (
    NPY_HEADER
    + pickle.PROTO + bytes([3])
    + pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n" + _put(0)
    + pickle.GLOBAL + b"numpy\nndarray\n" + _put(1)
    + _int1(0) + pickle.TUPLE1 + _put(2) + pickle.SHORT_BINBYTES + b"\x01b" + _put(3) + pickle.TUPLE3 + _put(4)
    + pickle.REDUCE + _put(5) + pickle.MARK + _int1(1) + pickle.EMPTY_TUPLE
    + pickle.GLOBAL + b"numpy\ndtype\n" + _put(6) + _text("O8") + _put(7) + pickle.NEWFALSE + pickle.NEWTRUE
    + pickle.TUPLE3 + _put(8) + pickle.REDUCE + _put(9) + pickle.MARK + _int1(3) + _text("|") + _put(10)
    + pickle.NONE * 3 + _MINUS_ONE_TWICE + _int1(63) + pickle.TUPLE + _put(11) + pickle.BUILD
    + pickle.NEWFALSE + pickle.EMPTY_LIST + _put(12) + pickle.EMPTY_DICT + _put(13) + pickle.MARK
    + _array_head("inst_map", True)
)  # fmt: skip
LABEL_MIDDLE = _array_tail(True) + _array_head("type_map", False)
LABEL_SUFFIX = (
    _array_tail(False) + pickle.SETITEMS + pickle.APPEND + pickle.TUPLE + _put(33) + pickle.BUILD + pickle.STOP
)
LABEL_BYTES = len(LABEL_PREFIX) + ARRAY_BYTES + len(LABEL_MIDDLE) + ARRAY_BYTES + len(LABEL_SUFFIX)
_MIDDLE_AT = len(LABEL_PREFIX) + ARRAY_BYTES
_SUFFIX_AT = _MIDDLE_AT + len(LABEL_MIDDLE) + ARRAY_BYTES
ALLOWED_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype")


def label_chunks(instance, semantic):
    """The label file as chunks (no joined copy): the pickle's fixed opcodes around the two maps' bytes."""
    inst_map = np.ascontiguousarray(instance, dtype="<i4")
    type_map = np.ascontiguousarray(semantic, dtype="<i4")
    return LABEL_PREFIX, inst_map.data.cast("B"), LABEL_MIDDLE, type_map.data.cast("B"), LABEL_SUFFIX


def read_label(data):
    """(inst_map, type_map) from a label file's bytes, or ValueError saying why it is not one we accept.

    Nothing is unpickled: the bytes must be exactly the layout label_chunks writes around the two arrays."""
    if (
        len(data) == LABEL_BYTES
        and data[: len(LABEL_PREFIX)] == LABEL_PREFIX
        and data[_MIDDLE_AT : _MIDDLE_AT + len(LABEL_MIDDLE)] == LABEL_MIDDLE
        and data[_SUFFIX_AT:] == LABEL_SUFFIX
    ):
        inst_map = np.frombuffer(data, "<i4", PATCH_SIZE * PATCH_SIZE, len(LABEL_PREFIX)).reshape(
            PATCH_SIZE, PATCH_SIZE
        )
        type_map = np.frombuffer(data, "<i4", PATCH_SIZE * PATCH_SIZE, _MIDDLE_AT + len(LABEL_MIDDLE)).reshape(
            PATCH_SIZE, PATCH_SIZE
        )
        return inst_map, type_map
    if len(data) < LABEL_BYTES and data[: len(LABEL_PREFIX)] == LABEL_PREFIX[: len(data)]:
        raise ValueError(f"truncated: {len(data)} bytes, a label file has {LABEL_BYTES}")
    if data[: len(NPY_HEADER)] != NPY_HEADER:
        raise ValueError("is not the .npy of a pickled dict (header differs)")
    names = pickle_globals(data[len(NPY_HEADER) :])
    if any(name.startswith("numpy._core.") for name in names):
        raise ValueError("refers to numpy._core (saved by numpy 2): numpy < 2, which CellViT pins, cannot load it")
    foreign = [name for name in names if name not in ALLOWED_GLOBALS]
    if foreign:
        raise ValueError(f"refused: its pickle calls {', '.join(foreign)}")
    raise ValueError("is not the pickle of a dict of inst_map and type_map, int32 (256, 256), that this format writes")


def pickle_globals(body):
    """The module.name of every global a pickle would import, read from its opcodes without running them."""
    names, pushed, memo = [], [], {}
    try:
        for opcode, arg, _ in pickletools.genops(body):
            if opcode.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(str(s) for s in pushed[-2:]))
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                pushed.append(arg)
            elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(arg))
            elif opcode.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = pushed[-1] if pushed else None
    except ValueError:  # a truncated or malformed stream: what was read so far is still worth naming
        pass
    return names


# --- the layout -----------------------------------------------------------------------------------------


def stem(split, position, row):
    """CellViT's {k}_{i}: i is the index in the official fold for the folds config, else the split position."""
    i = row["index"] if split.startswith("fold") else position
    return f"{FOLD_OF_SPLIT[split]}_{i}"


def patch_record(split, position, row):
    """(stem, our id, tissue name, nuclei per class) of one patch: what the CSVs and weights are made of."""
    counts = nuclei_per_class([nucleus["label"] for nucleus in row["nuclei"]])
    return stem(split, position, row), row["id"], pim.TISSUES[row["tissue"]], counts


def csv_texts(records):
    """{file name: text} of a fold folder's CSVs, ordered as CellViT's own files are."""
    types = "img,type\n" + "".join(f"{s}.png,{tissue}\n" for s, _, tissue, _ in records)
    counts = "Image," + ",".join(NUCLEI_TYPES[1:]) + "\n"
    counts += "".join(
        f"{s}.png,{','.join(map(str, c))}\n" for s, _, _, c in sorted(records, key=lambda r: f"{r[0]}.png")
    )
    ids = "img,id\n" + "".join(f"{s}.png,{patch_id}\n" for s, patch_id, _, _ in records)
    return {"types.csv": types, "cell_count.csv": counts, "ids.csv": ids}


def dataset_config_text():
    tissues = "".join(f'  "{name}": {k}\n' for k, name in enumerate(pim.TISSUES))
    nuclei = "".join(f'  "{name}": {k}\n' for k, name in enumerate(NUCLEI_TYPES))
    return f"tissue_types:\n{tissues}\nnuclei_types:\n{nuclei}"


def weight_config_text(records):
    """Patches per tissue over the whole export, as CellViT's file counts all three folds. Tissues without a
    patch are left out: CellViT's tissue weight divides by the count."""
    counts = Counter(tissue for split_records in records for _, _, tissue, _ in split_records)
    return "tissue:\n" + "".join(f'  "{name}": {counts[name]}\n' for name in pim.TISSUES if counts[name])


def label_problems(instance, semantic):
    """The check of a label file's bytes: read without unpickling, then both maps compared."""

    def check(data):
        try:
            inst_map, type_map = read_label(data)
        except ValueError as exc:
            return [str(exc)]
        problems = []
        for key, actual, expected in (("inst_map", inst_map, instance), ("type_map", type_map, semantic)):
            wrong = int((actual != expected).sum())
            if wrong:
                problems.append(f"{key}: {wrong} of {PATCH_SIZE * PATCH_SIZE} values differ")
        return problems

    return check


class CellViT(Format):
    split_dirs: ClassVar[dict] = {split: f"fold{k}" for split, k in FOLD_OF_SPLIT.items()}

    def patch_files(self, split, position, row, options):
        folder, name = self.split_dir(split), stem(split, position, row)
        instance, semantic = decode(row["instance_mask"]["bytes"]), decode(row["semantic_mask"]["bytes"])
        label = label_chunks(instance, semantic)
        return [
            Png(f"{folder}/images/{name}.png", row["image"]["bytes"]),
            Checked(f"{folder}/labels/{name}.npy", label, label_problems(instance, semantic)),
        ]

    def record(self, split, position, row, options):
        return patch_record(split, position, row)

    def tree_files(self, dataset_dict, records, options):
        files = [
            Text(f"{self.split_dir(s)}/{name}", text) for s in records for name, text in csv_texts(records[s]).items()
        ]
        return files + [
            Text("dataset_config.yaml", dataset_config_text()),
            Text("weight_config.yaml", weight_config_text(records.values())),
        ]

    def estimate(self, dataset_dict, options):
        sizes = [YAML_BOUND, YAML_BOUND]
        for dataset in dataset_dict.values():
            sizes += png_lengths(dataset, "image") + [LABEL_BYTES] * dataset.num_rows
            sizes += [CSV_ROW_BOUND * (dataset.num_rows + 1)] * 3
        return sizes


FORMAT = CellViT()
