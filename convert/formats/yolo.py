"""yolo: Ultralytics segmentation, DIR/images/{train,val,test}/<id>.png, DIR/labels/.../<id>.txt, data.yaml.

One line per nucleus: `class x1 y1 x2 y2 ...`, class = label 0..4, coordinates divided by the width and
height, 6 decimals. The line is written for the way Ultralytics reads it back: `polygon2mask` multiplies
by the size, casts to int32 (so any point in [x, x + 1) lands on pixel x) and fills with OpenCV
(`fillPoly`, edges included, even-odd). Every vertex therefore sits strictly inside one of the nucleus'
own border pixels, 1/64 px from its edge, so that a one-piece nucleus (8-connected; one pixel, lines and
holes included) fills back exactly and the box Ultralytics derives from the line is the pixel extent
[x, y, x + w, y + h] within 1/64 px. A hole is spliced into the outline by a vertical zero-width bridge
over the nucleus' own pixels. A nucleus in several pieces is one line: the pieces are joined at their
closest points by zero-width bridges, as Ultralytics' COCO converter (`merge_multi_segment`) does; the
bridges are the only pixels the fill adds. data.yaml names no `path`: Ultralytics then reads the tree
the YAML is in, wherever it has been moved.
"""

import cv2
import numpy as np
import pyarrow.compute as pc

import pannuke_imagemask as pim

from ..files import Text, Yaml, image_file
from ..images import decode, image_size_bounds
from . import FOLD_PROTOCOL, Format

SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}  # Ultralytics' own folder names
DECIMALS = 6


# How far inside its pixel a vertex sits. Ultralytics rasterises a line as cv2.fillPoly of the coordinates times
# 256 cast to int32 (edges included), so a vertex anywhere in [x, x + 1) lands on pixel x; 1/64 px keeps every
# vertex off the pixel's edges through 6-decimal rounding (1.3e-4 px) and float32 (1.5e-5 px), and keeps the
# box Ultralytics derives from the line (its extreme vertices) within 1/64 px of the nucleus' pixel extent.
INSET = 1 / 64


# A bound for the free-space estimate: each pixel has 4 half-pixels, a walk passes a pinch twice, a corner may
# add a point and each hole 2 for its bridge. Measured worst cases (tests/test_format_yolo.py): a diagonal line 6.0,
# a checkerboard (a hole at every other pixel) 9.6 points per pixel.
POINTS_PER_PIXEL = 10


def _outline(up, points):
    """A closed walk over the doubled mask's half-pixels as (n, 2) x, y vertices in pixels, each inside a nucleus pixel.

    A half-pixel maps to its pixel's near edge (first half) or far edge (second half), INSET inside: the
    outline then hugs the pixel extent. A diagonal step that changes pixel in both x and y would cross a
    pixel corner, where rounding could pick an outside pixel: it goes round through the half-pixel at the
    corner that belongs to the nucleus (there is none only where two pixels touch at a corner alone).
    Points on a straight run are dropped: the line stays as short as the outline allows.
    """
    following = np.concatenate([points[1:], points[:1]])
    step = following - points
    crossing = (np.abs(step) == 1).all(axis=1) & ((points // 2) != (following // 2)).all(axis=1)
    if crossing.any():
        here, there = points[crossing], following[crossing]
        across = np.column_stack([there[:, 0], here[:, 1]])  # x first, then y
        down = np.column_stack([here[:, 0], there[:, 1]])  # y first, then x
        use_across = up[across[:, 1], across[:, 0]].astype(bool)
        use_down = ~use_across & up[down[:, 1], down[:, 0]].astype(bool)
        corners = np.where(use_across[:, None], across, down)
        keep = use_across | use_down
        points = np.insert(points, np.flatnonzero(crossing)[keep] + 1, corners[keep], axis=0)
    vertices = points // 2 + np.where(points % 2 == 1, 1 - INSET, INSET)
    after = np.diff(vertices, axis=0, append=vertices[:1])
    before = np.concatenate([after[-1:], after[:-1]])
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    straight = (cross == 0) & ((before * after).sum(axis=1) > 0)  # exact: the values are multiples of 1/64
    return vertices[~straight] if (~straight).sum() >= 3 else vertices


def _splice_holes(up, outer, holes):
    """The outer border walk with every hole's border spliced in by a zero-width vertical bridge.

    From a hole's topmost half-pixel the bridge goes straight up over the nucleus' own half-pixels to the
    first one below background: a half-pixel of a border already walked (the outside, or a hole higher
    up, spliced earlier). Walked there and back, the bridge adds no area under OpenCV's even-odd fill and
    the hole stays open; being vertical, it rasterises onto the nucleus' pixels only.
    """
    walk = outer
    for hole in sorted(holes, key=lambda h: (h[:, 1].min(), h[np.argmin(h[:, 1]), 0])):
        top = int(np.lexsort((hole[:, 0], hole[:, 1]))[0])
        x, y = hole[top]
        end = y
        while up[end - 1, x]:
            end -= 1
        (at,) = np.flatnonzero((walk[:, 0] == x) & (walk[:, 1] == end))[:1]
        hole = np.roll(hole, -top, axis=0)
        walk = np.concatenate([walk[: at + 1], hole, hole[:1], walk[at:]])
    return walk


def _pieces(mask):
    """Each 8-connected piece of a mask as one outline (its holes spliced in), in OpenCV's order."""
    # Doubled, a one-pixel piece or line still has an outline through distinct points on both of its sides.
    up = np.zeros((2 * mask.shape[0] + 2, 2 * mask.shape[1] + 2), np.uint8)  # a border of background: every
    up[1:-1, 1:-1] = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)  # walk up from a hole ends inside it
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    pieces = []
    for k, (_, _, child, parent) in enumerate(hierarchy[0] if contours else []):
        if parent != -1:
            continue
        holes = []
        while child != -1:
            holes.append(contours[child].reshape(-1, 2))
            child = hierarchy[0][child][0]
        walk = _splice_holes(up, contours[k].reshape(-1, 2), holes) - 1  # undo the padding
        pieces.append(_outline(up[1:-1, 1:-1], walk))
    return pieces


def _nearest(a, b):
    distances = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    first, second = np.unravel_index(int(np.argmin(distances)), distances.shape)
    return int(first), int(second)


def merge_pieces(pieces):
    """One closed outline through every piece: out along the bridges, each piece in turn, and back."""
    if len(pieces) == 1:
        return pieces[0]
    entries, exits = [None] * len(pieces), [None] * len(pieces)
    for k in range(1, len(pieces)):
        exits[k - 1], entries[k] = _nearest(pieces[k - 1], pieces[k])
    last = len(pieces) - 1
    first = np.roll(pieces[0], -exits[0], axis=0)
    forward, backward = [first, first[:1]], []
    for k in range(1, last):
        rolled = np.roll(pieces[k], -entries[k], axis=0)
        turn = (exits[k] - entries[k]) % len(rolled)
        forward.append(rolled[: turn + 1])  # entry to exit, on the way out
        backward.insert(0, np.concatenate([rolled[turn:], rolled[:1]]))  # exit round to entry, on the way back
    final = np.roll(pieces[last], -entries[last], axis=0)
    forward += [final, final[:1]]
    return np.concatenate(forward + backward)


def nucleus_polygon(mask):
    """The outline of one nucleus mask, as float (n, 2) x, y points in pixels."""
    return merge_pieces(_pieces(mask))


def label_text(instance, nuclei):
    """The label file of one patch: one line per nucleus, empty without nuclei."""
    height, width = instance.shape
    lines = []
    for nucleus in nuclei:
        x, y, w, h = nucleus["bbox"]  # trace within the nucleus' box: a fraction of the patch's pixels
        points = (nucleus_polygon(instance[y : y + h, x : x + w] == nucleus["id"]) + (x, y)) / (width, height)
        values = map(f"{{:.{DECIMALS}f}}".format, points.ravel().tolist())  # Python floats: faster to format
        lines.append(" ".join([str(nucleus["label"]), *values]))
    return "".join(line + "\n" for line in lines)


class Yolo(Format):
    takes = ("image_format",)
    split_dirs = SPLIT_DIRS
    changed_in = "1.2.0"  # outlines written for Ultralytics' rasteriser; data.yaml without path
    consumer_files = ("labels/*.cache",)  # Ultralytics caches what it read of each labels/<split> folder

    def patch_files(self, split, position, row, options):
        folder, image_format = self.split_dir(split), options["image_format"]
        text = label_text(decode(row["instance_mask"]["bytes"]), row["nuclei"])
        return [image_file(f"images/{folder}/{row['id']}.{image_format}", row, image_format),
                Text(f"labels/{folder}/{row['id']}.txt", text)]  # fmt: skip

    def tree_files(self, dataset_dict, records, options):
        return [Yaml(name, content) for name, content in data_yamls([self.split_dir(s) for s in dataset_dict]).items()]

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"])
            # At most POINTS_PER_PIXEL points per pixel of the nucleus (plus bridges), 2 x 9 characters each.
            nuclei = dataset.data.table.column("nuclei").combine_chunks()  # row indices over the whole split
            rows = pc.list_parent_indices(nuclei).to_numpy(zero_copy_only=False)
            areas = pc.struct_field(pc.list_flatten(nuclei), "area").to_numpy(zero_copy_only=False)
            sizes += np.bincount(
                rows, weights=4 + 18 * (POINTS_PER_PIXEL * areas + 8), minlength=dataset.num_rows
            ).tolist()
        return sizes + [4096]


def data_yamls(folders):
    """{file name: content}: data.yaml; for the folds config also data_split{2,3}.yaml (official protocol)."""
    names = dict(enumerate(pim.NUCLEUS_CLASSES))
    if set(folders) == {"fold1", "fold2", "fold3"}:
        arrangements = {
            ("data.yaml" if k == 1 else f"data_split{k}.yaml"): splits for k, splits in FOLD_PROTOCOL.items()
        }
    else:
        arrangements = {"data.yaml": tuple(f if f in folders else None for f in ("train", "val", "test"))}
    files = {}
    for name, (train, val, test) in arrangements.items():
        content = {}
        for key, folder in (("train", train), ("val", val), ("test", test)):
            if folder:
                content[key] = f"images/{folder}"
        content["names"] = names
        files[name] = content
    return files


FORMAT = Yolo()
