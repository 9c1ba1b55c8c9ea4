"""Export formats: one module per format, found by its name; each describes its files once.

A format module defines `FORMAT`, an instance of a `Format` subclass, and is a format because it is in
this package (names starting with "_" are not; "_" inside a module's name is "-" in the format's). A format says which files its tree holds and what each
must hold, as convert.files.File objects; export writes them and verify checks them, both generically:

- `patch_files(split, position, row, options)`: the files of one patch (row: the builder's row, images
  as undecoded PNG bytes); export calls it in a worker, one patch at a time, and verify for each patch.
  A file that several patches fill (convert.files.Row: pannuke's arrays) is made before the workers
  start, from the description of each split's first patch;
- `record(split, position, row, options)`: what the whole-split or whole-tree files need of the patch
  (default None); records flow back from the workers in split order;
- `tree_files(dataset_dict, records, options)`: the files of whole splits and of the tree (records:
  {split: [record, ...]});
- `estimate(dataset_dict, options)`: the sizes of the files it will write, before writing (a bound);
- `advice(out)`: warnings about where the tree was written (default none).

options: {"size", "mask_style", "image_format"} as export.json records them (None for an option the
format does not take) and "rows", {split: number of patches}.

Attributes: `takes`, the options of size, mask_style, image_format it accepts; `split_dirs`, a split's folder name; `consumer_files`, fnmatch patterns of files a
framework that reads the tree leaves in it (verify accepts them); `changed_in`, the tool version whose
files of this format differ from those of earlier versions (verify then says to export again).
"""

import importlib
import pkgutil
from typing import ClassVar

import datasets


class Format:
    """The interface every format implements; the defaults suit a format with patch files only."""

    takes = ()
    consumer_files: ClassVar[tuple] = ()
    changed_in = None
    split_dirs: ClassVar[dict] = {"train": "train", "validation": "valid", "test": "test"}  # fold1..3 unchanged

    @property
    def name(self):
        return format_name(type(self).__module__.rsplit(".", 1)[-1])

    @classmethod
    def split_dir(cls, split):
        return cls.split_dirs.get(split, split)

    def patch_files(self, split, position, row, options):
        raise NotImplementedError

    def record(self, split, position, row, options):
        return None

    def tree_files(self, dataset_dict, records, options):
        return []

    def estimate(self, dataset_dict, options):
        raise NotImplementedError

    def advice(self, out):
        return []


def undecoded(dataset):
    """The same rows with images as raw PNG bytes, so that unchanged files are copied, not re-encoded."""
    for column in ("image", "semantic_mask", "instance_mask"):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


# The folds config: the official protocol's three (train, val, test) arrangements of the folds.
FOLD_PROTOCOL = {1: ("fold1", "fold2", "fold3"), 2: ("fold2", "fold1", "fold3"), 3: ("fold3", "fold2", "fold1")}


def format_name(module):
    """A format's name from its module's: "_" becomes "-" (hovernet_mat.py is `hovernet-mat`, as HoVer-Net's
    users name the .mat layout, beside the `hovernet` .npy one)."""
    return module.replace("_", "-")


FORMAT_NAMES = tuple(sorted(format_name(m.name) for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get_format(name):
    """The format object of a name (its module is imported only when asked for)."""
    if name not in FORMAT_NAMES:
        raise ValueError(f"unknown format {name!r}; valid: {', '.join(FORMAT_NAMES)}")
    return importlib.import_module(f".{name.replace('-', '_')}", __package__).FORMAT


def summary_row(fmt, split, row):
    """[split folder, id, fold, index, tissue, nuclei per class..., nuclei]: what the statistics need."""
    import pannuke_imagemask as pim

    from ..common import nuclei_per_class

    counts = nuclei_per_class([n["label"] for n in row["nuclei"]])
    return (
        [fmt.split_dir(split), row["id"], row["fold"], row["index"], pim.TISSUES[row["tissue"]]]
        + counts
        + [sum(counts)]
    )
