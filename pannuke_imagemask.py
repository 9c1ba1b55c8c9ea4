# Licence of this script: Apache-2.0. Licence of the PanNuke data: CC BY-NC-SA 4.0.
"""PanNuke nuclei segmentation and classification as image, semantic mask, instance mask and nuclei."""

import dataclasses
import hashlib
import io
import logging
import os
import re
import socket
from fractions import Fraction
from typing import ClassVar

import datasets
import numpy as np
from PIL import Image

try:  # a dependency of the project, optional for the loading script under datasets<4: Pillow is the fallback
    import cv2
except ImportError:  # pragma: no cover - exercised where OpenCV is absent
    cv2 = None

logger = logging.getLogger(__name__)

_CITATION = """\
@inproceedings{gamper2019pannuke,
  title     = {PanNuke: An Open Pan-Cancer Histology Dataset for Nuclei Instance Segmentation and Classification},
  author    = {Gamper, Jevgenij and Koohbanani, Navid Alemi and Benet, Ksenija and Khuram, Ali and Rajpoot, Nasir},
  booktitle = {Digital Pathology. ECDP 2019. Lecture Notes in Computer Science, vol 11435},
  pages     = {11--19},
  publisher = {Springer},
  year      = {2019},
  doi       = {10.1007/978-3-030-23937-4_2}
}
@article{gamper2020pannuke,
  title   = {PanNuke Dataset Extension, Insights and Baselines},
  author  = {Gamper, Jevgenij and Koohbanani, Navid Alemi and Graham, Simon and Jahanifar, Mostafa and
             Khurram, Syed Ali and Azam, Ayesha and Hewitt, Katherine and Rajpoot, Nasir},
  journal = {arXiv preprint arXiv:2003.10778},
  year    = {2020}
}
"""

_DESCRIPTION = """\
PanNuke: 7,901 H&E patches of 256x256 pixels at 40x from 19 tissues, with every nucleus segmented and
classified as neoplastic, inflammatory, connective/soft tissue, dead or epithelial. Each example holds
the RGB image, a semantic mask (palette PNG: 0 background, 1..5 nucleus class), a 16-bit instance mask (0 background,
1..K nuclei), per-nucleus class, area and bounding box, the tissue type, and the source fold and row.
"""

_HOMEPAGE = "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke"

_LICENSE = "CC BY-NC-SA 4.0"

# The official zips; a mirror can replace the base URL (config field `base_url` or this variable).
BASE_URL = "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke"
BASE_URL_ENV = "PANNUKE_BASE_URL"
DOWNLOADS = {
    1: ("fold_1.zip", 700_275_281, "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b"),
    2: ("fold_2.zip", 658_842_552, "5bc540cc509f64b5f5a274d6e5a245527dbd3e6d3155d43555115c5d54709b07"),
    3: ("fold_3.zip", 717_969_882, "c14d372981c42f611ebc80afad01702b89cad8c1b3089daa31931cf5a4b1a39d"),
}

FOLD_SIZES = {1: 2656, 2: 2523, 3: 2722}

TISSUES = [
    "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck",
    "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis",
    "Thyroid", "Uterus",
]  # fmt: skip

# Mask channels 0..4 in order; channel 5 is background and is not trusted (all zero on some void patches).
NUCLEUS_CLASSES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
NUM_CLASS_CHANNELS = len(NUCLEUS_CLASSES)

# Colours of the semantic classes (index 0 background, 1..5 the classes above), RGB as seen on screen. The
# semantic mask is a palette PNG with these colours: the Hub's dataset viewer shows it in colour (it cannot
# re-encode a palette image as JPEG), while its pixel values stay the class indices.
CLASS_COLORS = np.array(
    [
        (0, 0, 0),  # background
        (0, 255, 0),  # neoplastic
        (0, 0, 255),  # inflammatory
        (255, 0, 0),  # connective
        (0, 255, 255),  # dead
        (255, 255, 0),  # epithelial
    ],
    dtype=np.uint8,
)

PATCH_SIZE = 256  # the side of every PanNuke patch, in pixels: the one name of it in the project
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_RATIOS = (0.80, 0.15, 0.05)
DEFAULT_SPLIT_SEED = 0

MAX_ID = 65535  # instance ids must fit the 16-bit PNG
PNG_COMPRESS_LEVEL = 1  # lossless at any level; the fastest zlib level, as encoding dominates the cost
_CV2_PNG = [
    cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESS_LEVEL, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE
] if cv2 is not None else None  # fmt: skip
SHARD_PATCHES = 16  # patches per gen_kwargs shard: small, so that num_proc jobs get even shares of every split

_FOLD_NAME = re.compile(r"^(?:part|fold)[ _-]?([123])$", re.IGNORECASE)
_FILE_NAMES = ("images.npy", "masks.npy", "types.npy")

EXPECTED_LAYOUT = (
    "expected, per fold, images.npy, masks.npy and types.npy as unpacked from Kaggle "
    "('Part 1/Images/images.npy', 'Part 1/Images/types.npy', 'Part 1/Masks/masks.npy') or from the "
    "official zips ('Fold 1/images/fold1/images.npy', 'Fold 1/images/fold1/types.npy', "
    "'Fold 1/masks/fold1/masks.npy')"
)


class PanNukeFormatError(ValueError):
    """The raw PanNuke files are missing, ambiguous or not in the expected format."""


class PanNukeDownloadError(ConnectionError):
    """The official zips (or a mirror's) could not be downloaded."""


# ---------------------------------------------------------------------------------------------
# The split: a pure function of tissue names, folds, seed and ratios.
# ---------------------------------------------------------------------------------------------


def check_split_ratios(ratios):
    """Return the ratios as exact fractions, or raise ValueError naming what is wrong."""
    try:
        values = tuple(ratios)
        exact = tuple(Fraction(str(value)) for value in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"split_ratios must be three non-negative numbers (train, validation, test) summing to 1, got {ratios!r}"
        ) from None
    if len(exact) != len(SPLITS) or any(value < 0 for value in exact) or sum(exact) != 1:
        raise ValueError(
            f"split_ratios must be three non-negative numbers (train, validation, test) summing to 1, got {ratios!r}"
        )
    return exact


def split_sizes(n, ratios):
    """Split n patches by largest remainder: floors first, then leftovers by largest fraction."""
    exact = check_split_ratios(ratios)
    shares = [n * ratio for ratio in exact]
    sizes = [share.numerator // share.denominator for share in shares]
    by_fraction = sorted(range(len(SPLITS)), key=lambda k: (-(shares[k] - sizes[k]), k))
    for k in by_fraction[: n - sum(sizes)]:
        sizes[k] += 1
    return tuple(sizes)


def patch_order_key(seed, fold, index):
    """The keyed hash that orders patches inside a tissue group."""
    return hashlib.sha256(f"{seed}/{fold}/{index}".encode()).hexdigest()


def assign_splits(tissues_by_fold, seed=DEFAULT_SPLIT_SEED, ratios=DEFAULT_SPLIT_RATIOS):
    """Map {fold: tissue names in row order} to {split: [(fold, index), ...]} in (fold, index) order.

    Patches are grouped by tissue over all given folds, ordered inside a group by
    sha256(f"{seed}/{fold}/{index}"), and cut by largest-remainder sizes.
    """
    groups = {}
    for fold in sorted(tissues_by_fold):
        for index, tissue in enumerate(tissues_by_fold[fold]):
            groups.setdefault(str(tissue), []).append((fold, index))
    members = {split: [] for split in SPLITS}
    for tissue in sorted(groups):
        group = sorted(groups[tissue], key=lambda item: patch_order_key(seed, *item))
        start = 0
        for split, size in zip(SPLITS, split_sizes(len(group), ratios)):
            members[split].extend(group[start : start + size])
            start += size
    return {split: sorted(items) for split, items in members.items()}


def split_names(config):
    """The splits a config has, in order: fold1..fold3 for the official protocol, else train, validation, test."""
    return [f"fold{fold}" for fold in config.folds] if config.split_by_fold else list(SPLITS)


def split_folds(config, split):
    """The folds whose patches can be in a split of a config: one fold when the folds are the splits."""
    return (int(split[len("fold") :]),) if config.split_by_fold else tuple(config.folds)


def split_members(config, tissues_by_fold, seed=DEFAULT_SPLIT_SEED, ratios=DEFAULT_SPLIT_RATIOS):
    """The one rule of split membership: {split: [(fold, index), ...]} in (fold, index) order, empty splits kept.

    config gives the folds and whether each fold is a split of its own; tissues_by_fold holds at least the
    tissue lists of split_folds(config, split) for the splits wanted (with split_by_fold, the folds given
    are the splits returned). Otherwise the config's folds are pooled and cut by assign_splits.
    """
    if config.split_by_fold:
        return {
            f"fold{fold}": [(fold, index) for index in range(len(tissues_by_fold[fold]))]
            for fold in config.folds
            if fold in tissues_by_fold
        }
    return assign_splits({fold: tissues_by_fold[fold] for fold in config.folds}, seed, ratios)


# ---------------------------------------------------------------------------------------------
# Pixels: plain functions of numpy arrays.
# ---------------------------------------------------------------------------------------------


def image_to_uint8(image, where="image"):
    """Round an (H, W, 3) RGB array in 0..255 to uint8, or raise naming the bad values."""
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()  # NaN and inf reach these too: no separate finiteness pass
    if not (np.isfinite(low) and np.isfinite(high)):
        raise PanNukeFormatError(f"{where}: image has non-finite values (NaN or inf)")
    if low < 0 or high > 255:
        raise PanNukeFormatError(f"{where}: image values outside 0..255 (min {low:g}, max {high:g})")
    return np.rint(values).astype(np.uint8)


def mask_to_ids(mask, where="mask"):
    """Check an (H, W, 6) PanNuke mask and return its class channels 0..4 as uint16 ids."""
    values = np.asarray(mask)
    # Two reductions and one cast check and convert on the common path; the checks keep their order
    # (finite, integer, non-negative, in range), so a patch with several faults is named as before.
    low, high = values.min(), values.max()  # NaN and inf reach these too
    if values.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
        raise PanNukeFormatError(f"{where}: mask has non-finite values (NaN or inf)")
    in_range = low >= 0 and high <= MAX_ID
    ids = values.astype(np.uint16) if in_range else None
    if values.dtype.kind == "f":
        fraction = ids != values if in_range else values != np.floor(values)
        if fraction.any():
            raise PanNukeFormatError(f"{where}: mask has non-integer values (e.g. {values[fraction].flat[0]:g})")
    if low < 0:
        raise PanNukeFormatError(f"{where}: mask has negative values (min {low:g})")
    if high > MAX_ID:
        raise PanNukeFormatError(f"{where}: mask has values above {MAX_ID} (max {high:g})")
    return ids[..., :NUM_CLASS_CHANNELS]


def ids_to_labels(ids):
    """Turn (H, W, 5) uint16 class-channel ids into (semantic, instance, nuclei).

    Where several channels are non-zero the highest channel wins. Each (channel, source id) pair
    is one nucleus; they are numbered 1..K in (channel, source id) order, and a nucleus with no
    pixel left after overlaps is dropped. nuclei is a list of dicts with id, label, area and
    bbox [x, y, width, height].
    """
    semantic = np.zeros(ids.shape[:2], dtype=np.uint8)
    source = np.zeros(ids.shape[:2], dtype=np.uint16)
    for channel in range(NUM_CLASS_CHANNELS):  # later channels paint over earlier ones: the highest wins
        present = ids[..., channel] != 0
        np.copyto(semantic, np.uint8(channel + 1), where=present)
        np.copyto(source, ids[..., channel], where=present)
    foreground = semantic != 0
    keys = (semantic[foreground].astype(np.int64) - 1) * (MAX_ID + 1) + source[foreground]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    instance = np.zeros(ids.shape[:2], dtype=np.uint16)
    instance[foreground] = inverse + 1

    count = len(unique_keys)
    ys, xs = np.nonzero(foreground)
    area = np.bincount(inverse, minlength=count)
    x0 = np.full(count, ids.shape[1], dtype=np.int64)
    y0 = np.full(count, ids.shape[0], dtype=np.int64)
    x1 = np.zeros(count, dtype=np.int64)
    y1 = np.zeros(count, dtype=np.int64)
    np.minimum.at(x0, inverse, xs)
    np.minimum.at(y0, inverse, ys)
    np.maximum.at(x1, inverse, xs)
    np.maximum.at(y1, inverse, ys)
    labels = unique_keys // (MAX_ID + 1)
    nuclei = [
        {
            "id": k + 1,
            "label": int(labels[k]),
            "area": int(area[k]),
            "bbox": [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)],
        }
        for k in range(count)
    ]
    return semantic, instance, nuclei


def encode_png(array, palette=None):
    """Lossless PNG bytes of a uint8 (H, W) / (H, W, 3) or uint16 (H, W) array; with a palette, a `P` image."""
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette.tobytes())  # L becomes P: the indices stay, the palette only colours them
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_image_png(image):
    """Lossless PNG bytes of an (H, W, 3) uint8 RGB patch: the costliest step of the whole pipeline.

    Through OpenCV when it is installed: zlib's run-length strategy at level 1 takes about half of
    Pillow's time on these patches for the same pixels (the bytes differ; PNG is lossless either way).
    Masks stay with Pillow (encode_png): mostly background, they are faster there, and only Pillow
    writes palettes.
    """
    if cv2 is None:
        return encode_png(image)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), _CV2_PNG)  # OpenCV wants BGR
    if not ok:
        raise ValueError("OpenCV could not encode the image as PNG")
    return encoded.tobytes()


def encode_semantic_png(semantic):
    """The builder's semantic_mask: a palette PNG whose indices are the classes 0..5 (exports write greyscale)."""
    return encode_png(semantic, palette=CLASS_COLORS)


def patch_id(fold, index):
    """The stable example id and key, e.g. fold1_00042."""
    return f"fold{fold}_{index:05d}"


# ---------------------------------------------------------------------------------------------
# Files: discovery and header checks.
# ---------------------------------------------------------------------------------------------


def _fold_hint(path, root):
    """The fold number named by the nearest folder (Part N, Fold N, foldN, fold_N), if any."""
    parts = os.path.relpath(path, root).split(os.sep)[:-1][::-1] + [os.path.basename(os.path.abspath(root))]
    for part in parts:
        match = _FOLD_NAME.match(part)
        if match:
            return int(match.group(1))
    return None


def _fold_root(path):
    """The folder a fold's files hang from: the parent of Images/ and Masks/ in the Kaggle layout."""
    parent = os.path.dirname(path)
    if os.path.basename(parent).lower() in ("images", "masks"):
        return os.path.dirname(parent)
    return parent


def _some(paths, shown=3):
    """A few paths for a one-line message, and how many more there are."""
    rest = len(paths) - shown
    return ", ".join(paths[:shown]) + (f" and {rest} more" if rest > 0 else "")


def read_npy_header(path):
    """(shape, dtype) of an .npy file, checked to be complete; raises PanNukeFormatError."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise PanNukeFormatError(f"{path}: unsupported .npy format version {version}")
            offset = f.tell()
    except OSError as exc:
        raise PanNukeFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        if isinstance(exc, PanNukeFormatError):
            raise
        raise PanNukeFormatError(f"{path}: not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise PanNukeFormatError(f"{path}: holds Python objects (dtype {dtype}); refusing to unpickle")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise PanNukeFormatError(f"{path}: truncated: {actual} bytes, header {shape} {dtype} needs {expected}")
    return tuple(shape), dtype


def find_folds(roots, folds):
    """Find images/masks/types of each wanted fold under the given folders.

    Returns {fold: {"images": path, "masks": path, "types": path}}. The fold number comes from the
    nearest folder named Part N / Fold N / foldN / fold_N, or else from the patch count.
    """
    found = {}  # group key -> {file name: [paths]}
    visited = set()  # (device, inode) of every folder walked: symlinks are followed, but a cycle is not
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such folder; {EXPECTED_LAYOUT}")
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            status = os.stat(dirpath)
            if (status.st_dev, status.st_ino) in visited:
                dirnames[:] = []
                continue
            visited.add((status.st_dev, status.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
            for name in sorted(filenames):
                if name.lower() not in _FILE_NAMES:
                    continue
                path = os.path.join(dirpath, name)
                hint = _fold_hint(path, root)
                key = hint if hint is not None else ("root", _fold_root(path))
                found.setdefault(key, {}).setdefault(name.lower(), []).append(path)

    located = {}
    for key, files in sorted(found.items(), key=lambda item: str(item[0])):
        for name, paths in files.items():
            if len(paths) > 1:
                raise PanNukeFormatError(f"{name} found {len(paths)} times for one fold: {_some(paths)}")
        if isinstance(key, int):
            fold = key
        elif "images.npy" in files:
            count = read_npy_header(files["images.npy"][0])[0][:1]
            matches = [f for f, size in FOLD_SIZES.items() if count == (size,)]
            if not matches:
                logger.warning(
                    "%s: ignored: no Part N / Fold N folder name, and %s patches match no official fold size",
                    files["images.npy"][0],
                    count[0] if count else 0,
                )
                continue
            fold = matches[0]
        else:
            continue
        if fold in located:
            raise PanNukeFormatError(
                f"fold {fold} found twice: under {_fold_root(next(iter(located[fold].values())))} and "
                f"{_fold_root(next(iter(files.values()))[0])}"
            )
        located[fold] = {name[: -len(".npy")]: paths[0] for name, paths in files.items()}

    result = {}
    for fold in folds:
        files = located.get(fold, {})
        missing = [name for name in _FILE_NAMES if name[: -len(".npy")] not in files]
        if missing:
            where = ", ".join(str(root) for root in roots)
            what = f"fold {fold}" if not files else f"{', '.join(missing)} of fold {fold}"
            raise FileNotFoundError(f"{where}: {what} not found; {EXPECTED_LAYOUT}")
        result[fold] = {name: files[name] for name in ("images", "masks", "types")}
    return result


def check_fold(files):
    """Check headers, shapes, lengths and tissue names of one fold; return its tissue names."""
    image_shape, image_dtype = read_npy_header(files["images"])
    mask_shape, mask_dtype = read_npy_header(files["masks"])
    types_shape, types_dtype = read_npy_header(files["types"])
    for name, shape, dtype, channels in (
        ("images", image_shape, image_dtype, 3),
        ("masks", mask_shape, mask_dtype, 6),
    ):
        if dtype.kind not in "fiu":
            raise PanNukeFormatError(f"{files[name]}: dtype {dtype} is not numeric")
        if len(shape) != 4 or shape[-1] != channels:
            raise PanNukeFormatError(f"{files[name]}: shape {shape}, expected (N, H, W, {channels})")
    if mask_shape[1:3] != image_shape[1:3]:
        raise PanNukeFormatError(
            f"{files['masks']}: patches are {mask_shape[1]}x{mask_shape[2]} but images are "
            f"{image_shape[1]}x{image_shape[2]}"
        )
    if types_dtype.kind not in "US" or len(types_shape) != 1:
        raise PanNukeFormatError(
            f"{files['types']}: expected a 1-D array of tissue names, got {types_shape} {types_dtype}"
        )
    lengths = {image_shape[0], mask_shape[0], types_shape[0]}
    if len(lengths) != 1:
        raise PanNukeFormatError(
            f"{os.path.dirname(files['images'])}: arrays of different lengths: images.npy {image_shape[0]}, "
            f"masks.npy {mask_shape[0]}, types.npy {types_shape[0]}"
        )
    tissues = np.load(files["types"], allow_pickle=False)
    if tissues.dtype.kind == "S":
        tissues = tissues.astype(str)
    known = set(TISSUES)
    for index, tissue in enumerate(tissues.tolist()):
        if tissue not in known:
            raise PanNukeFormatError(
                f"{files['types']}: patch {index}: unknown tissue {tissue!r}; valid: {', '.join(TISSUES)}"
            )
    return tissues.tolist()


def read_patch(images, masks, index, files):
    """Read row `index` of the memory-mapped arrays and return (image uint8, ids uint16)."""
    image = image_to_uint8(images[index], where=f"{files['images']}: patch {index}")
    ids = mask_to_ids(masks[index], where=f"{files['masks']}: patch {index}")
    return image, ids


def open_fold(files):
    """Memory-map a checked fold's images and masks, read-only.

    This is np.load(path, mmap_mode="r", allow_pickle=False) minus its dispatch: `datasets` patches
    `np.load` inside builder modules to read through file objects, which cannot be memory-mapped.
    open_memmap refuses object dtypes, so nothing is ever unpickled.
    """
    images = np.lib.format.open_memmap(files["images"], mode="r")
    masks = np.lib.format.open_memmap(files["masks"], mode="r")
    return images, masks


def files_fingerprint(files_by_fold):
    """A digest of the path, size and modification time of every raw file used: the cache is tied to it."""
    digest = hashlib.sha256()
    for fold in sorted(files_by_fold):
        for name in sorted(files_by_fold[fold]):
            path = os.path.abspath(files_by_fold[fold][name])
            status = os.stat(path)
            digest.update(f"{fold}/{name}/{path}/{status.st_size}/{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def download_failure(url, exc):
    """A one-line PanNukeDownloadError for a download that failed: the URL, the cause, the ways forward."""
    cause = "unknown error"
    while exc is not None:
        status = getattr(exc, "status", None)
        if isinstance(status, int) and status >= 400:  # aiohttp's ClientResponseError, requests' HTTPError
            cause = f"HTTP {status} {getattr(exc, 'message', '') or ''}".strip()
            break
        if isinstance(exc, ConnectionRefusedError):
            cause = "connection refused"
            break
        if isinstance(exc, socket.gaierror):
            cause = f"host not found ({exc.strerror or exc})"
            break
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            cause = "timed out"
            break
        if str(exc) and str(exc) != url:
            cause = " ".join(str(exc).split())
        exc = exc.__cause__ or exc.__context__
    return PanNukeDownloadError(
        f"{url}: download failed: {cause}; use a mirror ({BASE_URL_ENV} or the config's base_url), or download "
        "the zips by hand, unpack them and pass their folder as --data-dir (data_dir=)"
    )


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The builder.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PanNukeImageMaskConfig(datasets.BuilderConfig):
    """A choice of folds and of how they are split."""

    folds: tuple = (1,)
    split_by_fold: bool = False
    split_ratios: tuple = DEFAULT_SPLIT_RATIOS
    split_seed: int = DEFAULT_SPLIT_SEED
    base_url: str = None

    def create_config_id(self, config_kwargs, custom_features=None):
        """datasets' id (the cache folder), tied to the raw files: a changed fold is prepared again.

        datasets keys the cache on the config kwargs, and data_dir is only a path: a fold replaced under the
        same path would silently give the old examples. Files that cannot be found add nothing here; the
        error comes when the split generators look for them.
        """
        config_id = super().create_config_id(config_kwargs, custom_features)
        if not self.data_dir:
            return config_id  # downloads are checked against their size and SHA-256
        try:
            files = find_folds([os.path.expanduser(self.data_dir)], self.folds)
        except (OSError, ValueError):
            return config_id
        return f"{config_id}-raw{files_fingerprint(files)[:16]}"


class PanNukeImageMask(datasets.GeneratorBasedBuilder):
    """PanNuke read from the raw npy folds, one patch at a time."""

    VERSION = datasets.Version("1.1.0")  # 1.1.0: semantic_mask is a palette PNG (docs/changelog.md)
    BUILDER_CONFIG_CLASS = PanNukeImageMaskConfig
    BUILDER_CONFIGS: ClassVar[list] = [
        PanNukeImageMaskConfig(
            name="part1",
            version=VERSION,
            folds=(1,),
            description="Fold 1 (Kaggle Part 1) split into train, validation, test.",
        ),
        PanNukeImageMaskConfig(
            name="all",
            version=VERSION,
            folds=(1, 2, 3),
            description="Folds 1, 2, 3 pooled and split into train, validation, test.",
        ),
        PanNukeImageMaskConfig(
            name="folds",
            version=VERSION,
            folds=(1, 2, 3),
            split_by_fold=True,
            description="Folds 1, 2, 3 as splits fold1, fold2, fold3 (the official three-fold protocol).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "part1"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_split_ratios(self.config.split_ratios)
        self.config.split_ratios = tuple(self.config.split_ratios)
        self.config.split_seed = int(self.config.split_seed)

    def _info(self):
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=datasets.Features(
                {
                    "id": datasets.Value("string"),
                    "image": datasets.Image(),
                    "semantic_mask": datasets.Image(),
                    "instance_mask": datasets.Image(),
                    "nuclei": [
                        {
                            "id": datasets.Value("int32"),
                            "label": datasets.ClassLabel(names=NUCLEUS_CLASSES),
                            "area": datasets.Value("int32"),
                            "bbox": datasets.Sequence(datasets.Value("int32"), length=4),
                        }
                    ],
                    "tissue": datasets.ClassLabel(names=TISSUES),
                    "fold": datasets.Value("int8"),
                    "index": datasets.Value("int32"),
                }
            ),
            homepage=_HOMEPAGE,
            license=_LICENSE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        if self.config.data_dir:
            roots = [os.path.expanduser(self.config.data_dir)]
        else:
            roots = self._download_folds(dl_manager)
        files = find_folds(roots, self.config.folds)
        tissues = {fold: check_fold(files[fold]) for fold in self.config.folds}
        members = split_members(self.config, tissues, self.config.split_seed, self.config.split_ratios)
        for split in [split for split, items in members.items() if not items]:
            # An Arrow split cannot be empty; small data or a zero ratio leave some splits without patches.
            logger.warning("split %r has no patches and is left out", split)
            del members[split]
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"shards": _shards(items, files, tissues)})
            for split, items in members.items()
        ]

    def _download_folds(self, dl_manager):
        if isinstance(dl_manager, datasets.StreamingDownloadManager):
            raise NotImplementedError(
                "streaming reads local folds only: pass data_dir=<folder with the unpacked PanNuke folds>"
            )
        base_url = (self.config.base_url or os.environ.get(BASE_URL_ENV) or BASE_URL).rstrip("/")
        urls = {str(fold): f"{base_url}/{DOWNLOADS[fold][0]}" for fold in self.config.folds}
        try:
            archives = dl_manager.download(urls)
        except (OSError, ValueError) as exc:
            failed = next((url for url in urls.values() if url in str(exc)), ", ".join(urls.values()))
            raise download_failure(failed, exc) from exc
        for fold in self.config.folds:
            _, size, sha256 = DOWNLOADS[fold]
            path = archives[str(fold)]
            # The bad file stays in the download cache, so say where: it must go before a retry.
            retry = f"(saved as {path}; delete it to download again)"
            actual_size = os.path.getsize(path)
            if actual_size != size:
                raise PanNukeFormatError(f"{urls[str(fold)]}: {actual_size} bytes, expected {size} {retry}")
            actual_sha = _sha256(path)
            if actual_sha != sha256:
                raise PanNukeFormatError(f"{urls[str(fold)]}: SHA-256 {actual_sha}, expected {sha256} {retry}")
        extracted = dl_manager.extract(archives)
        return [extracted[str(fold)] for fold in self.config.folds]

    def _generate_examples(self, shards):
        for shard in shards:
            images, masks = open_fold(shard["files"])
            fold = shard["fold"]
            for index, tissue in zip(shard["indices"], shard["tissues"]):
                image, ids = read_patch(images, masks, index, shard["files"])
                semantic, instance, nuclei = ids_to_labels(ids)
                key = patch_id(fold, index)
                yield (
                    key,
                    {
                        "id": key,
                        "image": {"path": None, "bytes": encode_image_png(image)},
                        "semantic_mask": {"path": None, "bytes": encode_semantic_png(semantic)},
                        "instance_mask": {"path": None, "bytes": encode_png(instance)},
                        "nuclei": nuclei,
                        "tissue": tissue,
                        "fold": fold,
                        "index": index,
                    },
                )


def _shards(items, files, tissues):
    """Cut a split's (fold, index) list into picklable shards of at most SHARD_PATCHES patches."""
    shards = []
    for start in range(0, len(items), SHARD_PATCHES):
        chunk = items[start : start + SHARD_PATCHES]
        for fold in sorted({fold for fold, _ in chunk}):
            indices = [index for f, index in chunk if f == fold]
            shards.append(
                {
                    "fold": fold,
                    "files": files[fold],
                    "indices": indices,
                    "tissues": [tissues[fold][index] for index in indices],
                }
            )
    return shards


def _format_error_behind(exc):
    """The message of the PanNukeFormatError that datasets wrapped, raised here or in a worker process."""
    while exc is not None:
        if isinstance(exc, PanNukeFormatError):
            return str(exc)
        # With num_proc > 1 the worker's exception arrives only as the text of its traceback.
        remote = getattr(exc, "tb", None)
        found = re.findall(r"^[\w.]*PanNukeFormatError: (.+)$", remote, re.MULTILINE) if isinstance(remote, str) else []
        if found:
            return found[-1]
        exc = exc.__cause__ or exc.__context__
    return None


def _is_default(config, key, value):
    default = getattr(config, key, object())
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    return value == default


def build(config_name="part1", data_dir=None, cache_dir=None, num_proc=None, **config_kwargs):
    """Prepare a config from the raw folds (or the official download) and return its DatasetDict."""
    defaults = {config.name: config for config in PanNukeImageMask.BUILDER_CONFIGS}.get(config_name)
    if defaults is not None:
        # datasets keys the cache on the kwargs given, so a kwarg equal to the default would rebuild it.
        config_kwargs = {key: value for key, value in config_kwargs.items() if not _is_default(defaults, key, value)}
    builder = PanNukeImageMask(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, **config_kwargs)
    try:
        builder.download_and_prepare(num_proc=num_proc)
    except datasets.exceptions.DatasetGenerationError as exc:
        error = _format_error_behind(exc)
        if error is None:
            raise
        raise PanNukeFormatError(error) from exc
    return builder.as_dataset()
