"""Independent reference computations, written from the format doc and the spec, not from the code under test.

They take another route on purpose: the split with Decimal arithmetic and explicit loops, the masks by
painting channels in order and enumerating (channel, id) pairs one by one.
"""

import hashlib
from decimal import Decimal

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")
CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
MASK_DTYPES = {"color": np.uint8, "semantic": np.uint8, "binary": np.uint8, "instance": np.uint16}


def imagefolder_features(datasets):
    """What `load_dataset("imagefolder")` makes of an imagemask tree, written out: the two files as Image
    columns, then the metadata. datasets is passed in: the lean suite and datasets 3.6's legacy job share it."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "id": datasets.Value("string"),
            "fold": datasets.Value("int64"),
            "index": datasets.Value("int64"),
            "tissue": datasets.Value("string"),
            **{f"n_{name}": datasets.Value("int64") for name in CLASS_NAMES},
            "n_nuclei": datasets.Value("int64"),
        }
    )


# The semantic palette of the spec, written out here: background black, then neoplastic, inflammatory,
# connective, dead, epithelial.
PALETTE = [(0, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 255), (255, 255, 0)]


def palette_of(image):
    """The colours of a P image's palette, in index order."""
    mode, data = image.palette.getdata()
    assert mode == "RGB"
    return [tuple(data[k : k + 3]) for k in range(0, len(data), 3)]


def reference_split(tissues_by_fold, seed, ratios):
    """{split: set of (fold, index)} by the README's rule."""
    weights = [Decimal(str(r)) for r in ratios]
    groups = {}
    for fold, names in tissues_by_fold.items():
        for index, name in enumerate(names):
            groups.setdefault(str(name), []).append((fold, index))
    result = {name: set() for name in SPLIT_NAMES}
    for members in groups.values():
        members = sorted(members, key=lambda m: hashlib.sha256(f"{seed}/{m[0]}/{m[1]}".encode()).hexdigest())
        n = len(members)
        exact = [n * w for w in weights]
        sizes = [int(e) for e in exact]
        remainders = [e - s for e, s in zip(exact, sizes)]
        for _ in range(n - sum(sizes)):
            best = 0
            for j in (1, 2):
                if remainders[j] > remainders[best]:
                    best = j
            sizes[best] += 1
            remainders[best] = Decimal(-1)
        position = 0
        for name, size in zip(SPLIT_NAMES, sizes):
            result[name].update(members[position : position + size])
            position += size
    return result


def reference_labels(mask):
    """(semantic uint8, instance uint16, nuclei) from the raw float64 (H, W, 6) mask."""
    channels = mask[..., :5]
    semantic = np.zeros(mask.shape[:2], dtype=np.uint8)
    for c in range(5):
        semantic[channels[..., c] != 0] = c + 1
    instance = np.zeros(mask.shape[:2], dtype=np.uint16)
    nuclei = []
    for c in range(5):
        for source in sorted(set(np.unique(channels[..., c]).tolist()) - {0.0}):
            pixels = (channels[..., c] == source) & (semantic == c + 1)
            if not pixels.any():
                continue
            label = len(nuclei) + 1
            instance[pixels] = label
            ys, xs = np.where(pixels)
            nuclei.append(
                {
                    "id": label,
                    "label": c,
                    "area": int(pixels.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                }
            )
    return semantic, instance, nuclei


def reference_image(image):
    """uint8 RGB from the raw float64 image: nearest integer, ties to even."""
    return np.round(np.asarray(image)).astype(np.uint8)


def reference_mask(style, mask):
    """The imagemask export's mask of a style, from the raw float64 (H, W, 6) mask, by the format doc."""
    semantic, instance, _ = reference_labels(mask)
    if style == "color":
        colour = np.zeros(semantic.shape + (3,), dtype=np.uint8)
        for value, rgb in enumerate(PALETTE):
            colour[semantic == value] = rgb
        return colour
    if style == "semantic":
        return semantic
    if style == "binary":
        return (semantic > 0).astype(np.uint8) * 255
    if style == "instance":
        return instance
    raise ValueError(style)
