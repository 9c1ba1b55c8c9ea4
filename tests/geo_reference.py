"""Independent writers of polygon predictions, for the geojson, hovernet-json and cellvit tests.

Written from each framework's contract (docs/evaluate.md, ../shared/docs/predictions-more.md), by other routes
than convert/: GeoJSON outlines are shapely's union of the pixel squares (shapely.geometry.mapping), HoVer-Net
and CellViT contours are cv2.findContours as HoVer-Net's post_proc `process` runs it, their fills are scipy's
hole filling of the outlined 8-connected piece, painted larger first in plain Python.
"""

import json

import cv2
import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import mapping

from convert.__main__ import main

CLASS_NAMES = ["Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"]


def square_union(mask):
    """shapely's union of the closed pixel squares of a bool mask (corner coordinates)."""
    rows, cols = np.nonzero(mask)
    return shapely.union_all(shapely.box(cols, rows, cols + 1, rows + 1))


def geometry_of(mask):
    """GeoJSON geometry (shapely.geometry.mapping) of a nucleus' exact outline: a Polygon or a MultiPolygon."""
    return mapping(square_union(mask))


def post_proc_nucleus(instance, value):
    """(contour (n, 2) x, y, centroid [x, y]) of one nucleus as HoVer-Net's post_proc `process` finds them, or None
    where it skips the nucleus (a contour of fewer than 3 points)."""
    mask = instance == value
    rows, cols = np.nonzero(mask)
    rmin, rmax, cmin, cmax = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = mask[rmin:rmax, cmin:cmax].astype(np.uint8)
    moments = cv2.moments(crop)
    contour = np.squeeze(cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].astype("int32"))
    if contour.ndim != 2 or contour.shape[0] < 3:
        return None
    centroid = [moments["m10"] / moments["m00"] + cmin, moments["m01"] / moments["m00"] + rmin]
    return contour + [cmin, rmin], centroid


def outlined(instance, value, contour):
    """The pixels an outline of pixel centres encloses: the nucleus' 8-connected piece holding its first point,
    holes filled."""
    pieces, _ = ndimage.label(instance == value, structure=np.ones((3, 3)))
    return ndimage.binary_fill_holes(pieces == pieces[contour[0][1], contour[0][0]])


def painted(masks):
    """(H, W) map 1..n of full-size masks, larger first, equal areas in order (the later on top)."""
    instance = np.zeros(masks[0].shape if masks else (256, 256), dtype=np.int64)
    order = sorted(range(len(masks)), key=lambda k: -int(masks[k].sum()))
    for k in order:
        instance[masks[k]] = k + 1
    return instance


def builder_masks(path, patches, members):
    """Write the builder's instance map of each member as a masks.npy prediction: channel = class, value = id."""
    array = np.zeros((len(members), 256, 256, 5), dtype=np.int32)
    for row, (_, index) in enumerate(members):
        _, _, instance, nuclei, _ = patches[index]
        for nucleus in nuclei:
            array[row, ..., nucleus["label"]][instance == nucleus["id"]] = nucleus["id"]
    np.save(path, array)
    return path


def scores(pred, data_dir, cache, out, *extra):
    """The --json result of evaluate on split train of part1, without its "pred" entry."""
    argv = ["evaluate", "--pred", str(pred), "--data-dir", data_dir, "--cache-dir", cache, "--split", "train"]
    assert main([*argv, "--json", str(out), "--quiet", *extra]) == 0
    result = json.loads(out.read_text())
    return result.pop("pred"), result
