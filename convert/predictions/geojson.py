"""`geojson`: a QuPath-style GeoJSON per patch, <id>.geojson, <id>_instanseg_prediction.geojson or <id>.json
(QuPath, InstanSeg, tiatoolbox, CellViT++).

Read as QuPath reads objects (qupath-core io/PathObjectTypeAdapters `read`, GsonTools `PathClassTypeAdapter`):

- the file is a FeatureCollection, a bare Feature or a bare list of Features;
- a Feature's object type is its properties' `objectType`, else `object_type` (InstanSeg), else a `type` that
  names an object type, else the Feature's own top-level `objectType` (tiatoolbox); none is an annotation.
  Tiles, TMA cores and the root are never nuclei. If any Feature of the split is a detection or a cell, only
  detections and cells are nuclei (annotations are then the regions they were found in); else annotations
  are (CellViT++, tiatoolbox);
- a cell's `nucleusGeometry` is scored instead of its `geometry`. Polygon and MultiPolygon, holes included;
  any other geometry is an error. A detection's or cell's MultiPolygon is one nucleus in pieces (QuPath: one
  object, one ROI); an annotation's MultiPolygon is one nucleus per polygon (CellViT++ writes one Feature per
  class). Each Polygon Feature is one nucleus: InstanSeg's pieces of one label, written as separate Features
  without their label, are scored as separate nuclei;
- `classification` as {name, color}, {names: [...]} (a derived class, "A: B"), a plain string or the pre-0.4
  {name, colorRGB}: our class names case-insensitively, "Nuclei"/"Nucleus"/"Detection"/"Cell" a nucleus
  without a class, other names an error unless --class-map maps them (convert/predictions/classes.py). Where
  features classified "Nuclei" and "Cells" meet in a split (InstanSeg's nuclei-and-cells models), the cells
  are cell outlines and are not scored. A split without any of our classes is class-agnostic.

Coordinates are (x, y) pixels, origin top-left. On pixel corners (QuPath's convention, InstanSeg's rasterio
polygons, our export), a pixel belongs to a nucleus when its centre is inside (convert/polygons.py `fill`:
exact for outlines traced along pixel edges). A split whose vertices are all whole numbers and which has an
edge that is neither horizontal nor vertical holds OpenCV contours through pixel centres (CellViT++,
tiatoolbox, HoVer-Net's QuPath export): each polygon is filled as cv2.fillPoly fills it, boundary pixels
included, as those writers draw them, and a note says so. A vertex outside the patch is an error. Nuclei
that overlap: the larger first, the smaller on top (convert/polygons.py `rasterise`, `paint_contours`);
one left without pixels (or whose outline holds no pixel centre) is not a nucleus. A missing file is a
patch without nuclei (tiatoolbox writes no file for an empty store), and a note counts them. Both
<id>.geojson and <id>_instanseg_prediction.geojson for one patch is an error.
"""

import os

import numpy as np

from ..polygons import paint_contours, rasterise
from .base import (
    Prediction,
    PredictionError,
    empty_prediction,
    from_instances,
    listing,
    read_json,
    stacked_points,
)
from .classes import type_of, unknown_names_error

NAME = "geojson"
ENDINGS = (".geojson", ".json")
OBJECT_TYPES = {"annotation", "detection", "cell", "tile", "tmacore", "tma_core", "root"}
NUCLEUS_OBJECTS = ("detection", "cell")
NEVER_NUCLEI = ("tile", "tmacore", "tma_core", "root")
NUCLEI_NAMES, CELL_NAMES = ("nuclei", "nucleus"), ("cells", "cell")
INSTANSEG_ENDING = "_instanseg_prediction.geojson"  # InstanSeg's eval(..., save_geojson=True): <image stem> + this


def _is_geojson(document):
    if isinstance(document, dict):
        return document.get("type") in ("FeatureCollection", "Feature")
    return isinstance(document, list) and all(isinstance(f, dict) and f.get("type") == "Feature" for f in document[:1])


def recognise(path):
    """A folder of .geojson files, or of .json files the first of which is GeoJSON."""
    if not os.path.isdir(path):
        return False
    names = listing(path)
    if any(name.endswith(".geojson") for name in names):
        return True
    first = next((name for name in names if name.endswith(".json")), None)
    if first is None or not os.path.isfile(os.path.join(path, first)):
        return False
    try:
        return _is_geojson(read_json(os.path.join(path, first)))
    except PredictionError:
        return False


def _features(document, path):
    if isinstance(document, list):
        features = document
    elif isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise PredictionError(f"{path}: a FeatureCollection whose features are not a list")
    elif isinstance(document, dict) and document.get("type") == "Feature":
        features = [document]
    else:
        what = f"an object of type {document.get('type')!r}" if isinstance(document, dict) else "not an object or list"
        raise PredictionError(f"{path}: {what}, expected a GeoJSON FeatureCollection, Feature or list of Features")
    for k, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise PredictionError(f"{path}: feature {k} is not a GeoJSON Feature")
    return features


def _object_type(feature, properties):
    for value in (properties.get("objectType"), properties.get("object_type"), properties.get("type")):
        if isinstance(value, str) and value.casefold() in OBJECT_TYPES:
            return value.casefold()
    value = feature.get("objectType")
    if isinstance(value, str) and value.casefold() in OBJECT_TYPES:
        return value.casefold()
    return "annotation"


def _class_name(properties, where):
    classification = properties.get("classification")
    if classification is None or isinstance(classification, str):
        return classification
    if isinstance(classification, dict):
        if isinstance(classification.get("name"), str):
            return classification["name"]
        names = classification.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(names)
    raise PredictionError(f"{where}: classification is not a name, {{name, color}} or {{names}}")


def _ring(ring, where):
    """An (n, 2) float64 ring, its closing point (GeoJSON repeats the first) dropped; finiteness is checked by
    _checked_features for the whole file at once."""
    try:
        if isinstance(ring, list) and len(ring) > 1 and ring[0] == ring[-1]:
            ring = ring[:-1]
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        raise PredictionError(f"{where}: coordinates are not [x, y] number pairs") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise PredictionError(f"{where}: coordinates are not [x, y] number pairs")
    return points


def _polygons(geometry, where):
    """[[exterior, *holes], ...] of a Polygon or MultiPolygon."""
    if not isinstance(geometry, dict):
        raise PredictionError(f"{where}: no geometry")
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind not in ("Polygon", "MultiPolygon"):
        raise PredictionError(f"{where}: a {kind} geometry; evaluate scores areas (Polygon, MultiPolygon)")
    polygons = [coordinates] if kind == "Polygon" else coordinates
    if not isinstance(polygons, list) or not polygons or not all(isinstance(p, list) and p for p in polygons):
        raise PredictionError(f"{where}: {kind} coordinates are not lists of rings")
    return [[_ring(ring, where) for ring in polygon] for polygon in polygons]


def _plain_features(features):
    """[(object type, class name or None, [[ring, ...], ...] as in the file, feature index)] of the features that
    may be nuclei, if each has a class name and a Polygon or MultiPolygon of non-empty lists; else None (the
    file is then checked one feature at a time)."""
    found = []
    for k, feature in enumerate(features):
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            return None
        kind = _object_type(feature, properties)
        if kind in NEVER_NUCLEI:
            continue
        try:
            name = _class_name(properties, "")
        except PredictionError:
            return None
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            return None
        coordinates = geometry.get("coordinates")
        polygons = [coordinates] if geometry["type"] == "Polygon" else coordinates
        if not isinstance(polygons, list) or not polygons or not all(isinstance(p, list) and p for p in polygons):
            return None
        found.append((kind, name, polygons, k))
    return found


def _stacked_rings(found):
    """The features of _plain_features with their rings as (n, 2) float64 arrays, closing points dropped,
    converted in one numpy call; None if a ring is not [x, y] number pairs or a coordinate not finite."""
    rings = [ring for _, _, polygons, _ in found for polygon in polygons for ring in polygon]
    stacked = stacked_points(rings)
    if stacked is None:
        return None
    points, lengths = stacked
    if not np.isfinite(points).all():
        return None
    # GeoJSON repeats a ring's first point at its end; compared as the file has them, as `_ring` does.
    closed = [len(ring) > 1 and ring[0] == ring[-1] for ring in rings]
    ends = np.cumsum(lengths).tolist()
    pieces = iter([points[end - length : end - drop] for end, length, drop in zip(ends, lengths.tolist(), closed)])
    return [
        (kind, name, [[next(pieces) for _ in polygon] for polygon in polygons], k) for kind, name, polygons, k in found
    ]


def _checked_features(path, features):
    """[(object type, class name or None, polygons, where)] of the features, checked one at a time so that the
    first problem is named."""
    found = []
    for k, feature in enumerate(features):
        where = f"{path}: feature {k}"
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise PredictionError(f"{where}: properties are not an object")
        kind = _object_type(feature, properties)
        if kind in NEVER_NUCLEI:
            continue
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")
        found.append((kind, _class_name(properties, where), _polygons(geometry, where), where))
    rings = [ring for _, _, polygons, _ in found for polygon in polygons for ring in polygon]
    if rings and not np.isfinite(np.concatenate(rings)).all():
        bad = next(
            where for _, _, polygons, where in found if not all(np.isfinite(r).all() for p in polygons for r in p)
        )
        raise PredictionError(f"{bad}: coordinates have non-finite values (NaN or inf)")
    return found


def read_file(path):
    """[(object type, class name or None, polygons, where)] of one file, checked as GeoJSON of areas."""
    features = _features(read_json(path), path)
    # All features at once; only if something is wrong, one at a time to name it.
    found = _plain_features(features)
    found = None if found is None else _stacked_rings(found)
    if found is None:
        return _checked_features(path, features)
    return [(kind, name, polygons, f"{path}: feature {k}") for kind, name, polygons, k in found]


def _geometry_facts(features):
    """(all vertices whole numbers, some edge slanted, lowest (x, y), highest (x, y)) of a file's features."""
    rings = [ring for _, _, polygons, _ in features for polygon in polygons for ring in polygon]
    if not rings:
        return True, False, np.zeros(2), np.zeros(2)
    points = np.concatenate(rings)
    lengths = np.array([len(ring) for ring in rings])
    following = np.arange(1, len(points) + 1)
    ends = np.cumsum(lengths)
    following[ends - 1] = ends - lengths
    step = points[following] - points
    slanted = bool(((step[:, 0] != 0) & (step[:, 1] != 0)).any())
    return bool(np.array_equal(points, np.round(points))), slanted, points.min(axis=0), points.max(axis=0)


def _first_outside(features, limit, size):
    """The error naming the first feature with a vertex below 0 or above limit (x, y) (the file has one)."""
    extents = (
        (where, np.concatenate([ring for polygon in polygons for ring in polygon]))
        for _, _, polygons, where in features
    )
    return next(
        _outside(where, points.min(axis=0), points.max(axis=0), size)
        for where, points in extents
        if (points.min(axis=0) < 0).any() or (points.max(axis=0) > limit).any()
    )


def _outside(where, low, high, size):
    return PredictionError(
        f"{where}: vertices at x {low[0]:g}..{high[0]:g}, y {low[1]:g}..{high[1]:g} leave the {size[1]}x{size[0]} patch"
    )


class GeojsonPrediction(Prediction):
    name = NAME

    def __init__(self, path, patches, size, files, class_map):
        super().__init__(path, patches, size)
        self.files, self.class_map = files, class_map  # files: per position, its path or None
        self.objects, self.centres, self.skip_cells = ("annotation",), False, False

    def _type(self, name):
        if name is None:
            return 0
        if self.skip_cells and name.casefold() in CELL_NAMES and name.casefold() not in self.class_map:
            return None
        return type_of(name, self.class_map)

    def _nuclei(self, features):
        """[(type, polygons)] of the nuclei of a file's features, by the split's rules."""
        nuclei = []
        for kind, name, polygons, _ in features:
            if kind not in self.objects:
                continue
            kind_of = self._type(name)
            if kind_of is None:
                continue
            if kind in NUCLEUS_OBJECTS:
                nuclei.append((kind_of, polygons))
            else:
                nuclei += [(kind_of, [polygon]) for polygon in polygons]
        return nuclei

    def read(self, position):
        path = self.files[position]
        if path is None:
            return empty_prediction(self.size)
        nuclei = self._nuclei(self.parsed(path, read_file))
        if self.centres:
            instance = paint_contours([[ring for polygon in p for ring in polygon] for _, p in nuclei], self.size)
        else:
            instance = rasterise([p for _, p in nuclei], self.size)
        ids = np.flatnonzero(np.bincount(instance.ravel(), minlength=len(nuclei) + 1)[1:]) + 1
        if not self.classified:
            prediction = from_instances(instance, ids, np.ones(len(ids), dtype=np.int64), where=path)
            return prediction._replace(types=np.zeros(len(ids), dtype=np.int64))
        types = np.array([nuclei[k - 1][0] for k in ids.tolist()], dtype=np.int64)
        return from_instances(instance, ids, types, where=path)


def patch_paths(folder, patch_ids):
    """Per patch the path of its file (or None): <id>.geojson or InstanSeg's <id>_instanseg_prediction.geojson,
    else <id>.json in a folder without .geojson files; after refusing files of patches not in the split and
    two files for one patch."""
    names = listing(folder)
    ending = ".geojson" if any(name.endswith(".geojson") for name in names) else ".json"
    found = {}
    for name in names:
        suffix = next((suffix for suffix in (INSTANSEG_ENDING, ending) if name.endswith(suffix)), None)
        if suffix is not None:
            found.setdefault(name[: -len(suffix)], []).append(name)
    split = set(patch_ids)
    foreign = sorted(name for patch, files in found.items() if patch not in split for name in files)
    if foreign:
        raise PredictionError(f"{folder}: {len(foreign)} GeoJSON file(s) not in the split, the first {foreign[0]}")
    twice = next((patch for patch in patch_ids if len(found.get(patch, ())) > 1), None)
    if twice is not None:
        raise PredictionError(
            f"{folder}: two GeoJSON files for one patch: {twice}{ending} and {twice}{INSTANSEG_ENDING}"
        )
    return [os.path.join(folder, found[patch][0]) if patch in found else None for patch in patch_ids]


def open_layout(path, patches, size, *, class_map=None, **options):
    files = patch_paths(path, [patch for patch, _ in patches])
    prediction = GeojsonPrediction(path, patches, size, files, dict(class_map or {}))
    # Every file is read here (and kept for scoring), so that a damaged one stops the command before anything
    # is scored, and so that the split's rules (which objects, which classes, which pixel convention) are known.
    height, width = prediction.size
    corners, centres = np.array([width, height]), np.array([width - 1, height - 1])
    classes, whole, slanted, edge = set(), True, False, None  # classes: (object type, class name) pairs
    for file in files:
        if file is None:
            continue
        features = prediction.keep(file, read_file)
        classes.update((kind, name) for kind, name, _, _ in features)
        file_whole, file_slanted, low, high = _geometry_facts(features)
        if (low < 0).any() or (high > corners).any():
            raise _first_outside(features, corners, prediction.size)
        if edge is None and (high > centres).any():  # outside if the vertices are pixel centres
            edge = _first_outside(features, centres, prediction.size)
        whole, slanted = whole and file_whole, slanted or file_slanted
    if {kind for kind, _ in classes} & set(NUCLEUS_OBJECTS):
        prediction.objects = NUCLEUS_OBJECTS
    # Only the names of the objects scored count: a region's class is not a nucleus' class.
    names = {name for kind, name in classes if kind in prediction.objects and name is not None}
    folded = {name.casefold() for name in names}
    prediction.skip_cells = bool(folded & set(NUCLEI_NAMES)) and bool(folded & set(CELL_NAMES))
    unknown = {
        name
        for name in names
        if prediction._type(name) is None and not (prediction.skip_cells and name.casefold() in CELL_NAMES)
    }
    if unknown:
        raise unknown_names_error(path, unknown)
    prediction.classified = any((prediction._type(name) or 0) > 0 for name in names)
    prediction.centres = whole and slanted
    if prediction.centres and edge is not None:
        raise edge
    if prediction.centres:
        prediction.notes.append(
            "geojson: whole-pixel vertices with slanted edges, OpenCV contours through pixel centres (CellViT++, "
            "tiatoolbox, HoVer-Net): each polygon filled as cv2.fillPoly fills it"
        )
    if prediction.skip_cells:
        prediction.notes.append("geojson: features classified as cells beside nuclei are cell outlines: not scored")
    missing = files.count(None)
    if missing:
        prediction.notes.append(f"geojson: {missing} of {len(files)} patches have no file: scored as without nuclei")
    if not prediction.classified:
        prediction.notes.append("geojson: no class of ours in the files: class-agnostic")
    return prediction
