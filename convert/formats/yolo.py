"""yolo: Ultralytics segmentation, DIR/images/{train,val,test}/<id>.png, DIR/labels/.../<id>.txt, data.yaml.

One line per nucleus: `class x1 y1 x2 y2 ...`, class = label 0..4, coordinates divided by the width and
height, 6 decimals. Coordinates are continuous: pixel (x, y) covers [x, x+1) x [y, y+1). The outline is
traced by OpenCV (`findContours`, external, CHAIN_APPROX_SIMPLE) through the centres of the nucleus'
boundary pixels (x + 0.5, y + 0.5). A piece too small for three distinct outline points (one pixel, a
1-pixel line) becomes the convex hull of its pixels' corners. A nucleus in several pieces is one line:
the pieces are joined at their closest points by zero-width bridges, as Ultralytics' COCO converter
(`merge_multi_segment`) does.
"""

import os

import cv2
import numpy as np
import pyarrow.compute as pc
import yaml

import pannuke_imagemask as pim

from . import Format, decode, file_set_problems, list_files, undecoded, write_bytes
from .imagemask import compare_image, image_file, image_size_bounds

SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}  # Ultralytics' own folder names
# The folds config: the official protocol's three (train, val, test) arrangements of the folds.
FOLD_PROTOCOL = {1: ("fold1", "fold2", "fold3"), 2: ("fold2", "fold1", "fold3"), 3: ("fold3", "fold2", "fold1")}
DECIMALS = 6


def _pieces(mask):
    """Each connected piece's outline as float (n, 2) x, y points, in OpenCV's order."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pieces = []
    for contour in contours:
        points = contour.reshape(-1, 2)
        if len(np.unique(points, axis=0)) >= 3:
            pieces.append(points + 0.5)
            continue
        corners = np.concatenate([points + offset for offset in ((0, 0), (1, 0), (1, 1), (0, 1))])
        pieces.append(cv2.convexHull(corners.astype(np.float32)).reshape(-1, 2).astype(np.float64))
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
        points = nucleus_polygon(instance == nucleus["id"]) / (width, height)
        lines.append(" ".join([str(nucleus["label"]), *(f"{v:.{DECIMALS}f}" for v in points.ravel())]))
    return "".join(line + "\n" for line in lines)


class Yolo(Format):
    name = "yolo"
    takes = ("image_format",)
    split_dirs = SPLIT_DIRS

    def paths(self, split, patch_id, image_format):
        folder = self.split_dir(split)
        return f"images/{folder}/{patch_id}.{image_format}", f"labels/{folder}/{patch_id}.txt"

    def prepare(self, root, dataset_dict, options):
        for split in dataset_dict:
            for sub in ("images", "labels"):
                os.makedirs(os.path.join(root, sub, self.split_dir(split)), exist_ok=True)

    def write_patch(self, root, split, position, row, options):
        image_path, label_path = self.paths(split, row["id"], options["image_format"])
        write_bytes(os.path.join(root, image_path), image_file(row, options["image_format"]))
        text = label_text(decode(row["instance_mask"]["bytes"]), row["nuclei"])
        write_bytes(os.path.join(root, label_path), text.encode())

    def finish(self, root, dataset_dict, options, out, records):
        for name, text in data_yamls(out, [self.split_dir(s) for s in dataset_dict]).items():
            write_bytes(os.path.join(root, name), text.encode())

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += image_size_bounds(dataset, options["image_format"], 256)
            # A traced outline has fewer than 4 points per pixel of the nucleus, 2 x 9 characters each.
            nuclei = dataset.data.table.column("nuclei").combine_chunks()  # row indices over the whole split
            rows = pc.list_parent_indices(nuclei).to_numpy(zero_copy_only=False)
            areas = pc.struct_field(pc.list_flatten(nuclei), "area").to_numpy(zero_copy_only=False)
            sizes += np.bincount(rows, weights=4 + 18 * (4 * areas + 8), minlength=dataset.num_rows).tolist()
        return sizes + [4096]

    def verify(self, root, dataset_dict, manifest, progress=None):
        image_format = manifest["image_format"]
        expected = {p for split, ds in dataset_dict.items() for i in ds["id"] for p in self.paths(split, i, image_format)}
        actual = list_files(root)
        problems = file_set_problems(expected, actual)
        for split, dataset in dataset_dict.items():
            for row in undecoded(dataset):
                image_path, label_path = self.paths(split, row["id"], image_format)
                if image_path in actual:
                    problem = compare_image(root, image_path, row, image_format)
                    if problem:
                        problems.append(f"{image_path}: {problem}")
                if label_path in actual:
                    with open(os.path.join(root, label_path), "rb") as f:
                        written = f.read()
                    wanted = label_text(decode(row["instance_mask"]["bytes"]), row["nuclei"]).encode()
                    if written != wanted:
                        problems.append(f"{label_path}: differs from the outlines of the source's nuclei")
                if progress:
                    progress(1)
        out = os.path.abspath(root)
        for name, text in data_yamls(out, [self.split_dir(s) for s in dataset_dict]).items():
            try:
                with open(os.path.join(root, name)) as f:
                    written = yaml.safe_load(f)
            except (OSError, yaml.YAMLError) as exc:
                problems.append(f"{name}: cannot be read as YAML ({exc})")
                continue
            wanted = yaml.safe_load(text)
            written.pop("path", None), wanted.pop("path", None)  # the tree may have been moved since
            if written != wanted:
                problems.append(f"{name}: differs")
        return problems


def data_yamls(out, folders):
    """{file name: YAML text}: data.yaml; for the folds config also data_split{2,3}.yaml (official protocol)."""
    names = dict(enumerate(pim.NUCLEUS_CLASSES))
    if set(folders) == {"fold1", "fold2", "fold3"}:
        arrangements = {
            ("data.yaml" if k == 1 else f"data_split{k}.yaml"): splits for k, splits in FOLD_PROTOCOL.items()
        }
    else:
        arrangements = {"data.yaml": tuple(f if f in folders else None for f in ("train", "val", "test"))}
    files = {}
    for name, (train, val, test) in arrangements.items():
        content = {"path": out}
        for key, folder in (("train", train), ("val", val), ("test", test)):
            if folder:
                content[key] = f"images/{folder}"
        content["names"] = names
        files[name] = yaml.safe_dump(content, sort_keys=False)
    return files


FORMAT = Yolo()
