"""`geojson`: a QuPath-style GeoJSON per patch, <id>.geojson or <id>.json (QuPath, InstanSeg, tiatoolbox, CellViT++).

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
that overlap: the larger first, the smaller on top (convert/predictions/classes.py `paint`); one left
without pixels (or whose outline holds no pixel centre) is not a nucleus. A missing file is a patch
without nuclei (tiatoolbox writes no file for an empty store), and a note counts them.
"""

import json
import os

import numpy as np

from ..polygons import contour_piece, polygons_piece
from .base import Prediction, PredictionError, empty_prediction, from_instances, listing, patch_files
from .classes import paint, type_of, unknown_names_error

NAME = "geojson"
ENDINGS = (".geojson", ".json")
OBJECT_TYPES = {"annotation", "detection", "cell", "tile", "tmacore", "tma_core", "root"}
NUCLEUS_OBJECTS = ("detection", "cell")
NEVER_NUCLEI = ("tile", "tmacore", "tma_core", "root")
NUCLEI_NAMES, CELL_NAMES = ("nuclei", "nucleus"), ("cells", "cell")


def _load(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except UnicodeDecodeError:
        raise PredictionError(f"{path}: not JSON text (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise PredictionError(f"{path}: not complete JSON ({exc})") from None


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
        return _is_geojson(_load(os.path.join(path, first)))
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
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        raise PredictionError(f"{where}: coordinates are not [x, y] number pairs") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise PredictionError(f"{where}: coordinates are not [x, y] number pairs")
    if not np.isfinite(points).all():
        raise PredictionError(f"{where}: coordinates have non-finite values (NaN or inf)")
    if len(points) > 1 and (points[0] == points[-1]).all():  # GeoJSON closes its rings; the fills need not
        points = points[:-1]
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


def read_file(path):
    """[(object type, class name or None, polygons, where)] of one file, checked as GeoJSON of areas."""
    found = []
    for k, feature in enumerate(_features(_load(path), path)):
        where = f"{path}: feature {k}"
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise PredictionError(f"{where}: properties are not an object")
        kind = _object_type(feature, properties)
        if kind in NEVER_NUCLEI:
            continue
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")
        found.append((kind, _class_name(properties, where), _polygons(geometry, where), where))
    return found


def _whole(polygons):
    return all(np.array_equal(ring, np.round(ring)) for polygon in polygons for ring in polygon)


def _slanted(polygons):
    for polygon in polygons:
        for ring in polygon:
            step = np.diff(np.vstack([ring, ring[:1]]), axis=0)
            if ((step[:, 0] != 0) & (step[:, 1] != 0)).any():
                return True
    return False


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
        nuclei = self._nuclei(read_file(path))
        if self.centres:
            pieces = [contour_piece([ring for polygon in p for ring in polygon], self.size) for _, p in nuclei]
        else:
            pieces = [polygons_piece(p, self.size) for _, p in nuclei]
        instance = paint(pieces, self.size)
        ids = np.unique(instance)
        ids = ids[ids != 0]
        if not self.classified:
            prediction = from_instances(instance, ids, np.ones(len(ids), dtype=np.int64), where=path)
            return prediction._replace(types=np.zeros(len(ids), dtype=np.int64))
        types = np.array([nuclei[k - 1][0] for k in ids.tolist()], dtype=np.int64)
        return from_instances(instance, ids, types, where=path)


def _ending(folder):
    names = listing(folder)
    if any(name.endswith(".geojson") for name in names):
        return ".geojson"
    return ".json"


def open_layout(path, patches, size, *, class_map=None, **options):
    ending = _ending(path)
    ids = [patch for patch, _ in patches]
    present = set(patch_files(path, ids, ending, "GeoJSON file(s)", required=False))
    files = [os.path.join(path, f"{patch}{ending}") if f"{patch}{ending}" in present else None for patch in ids]
    prediction = GeojsonPrediction(path, patches, size, files, dict(class_map or {}))
    # Every file is read once here, so that a damaged one stops the command before anything is scored, and
    # so that the split's rules (which objects, which classes, which pixel convention) are known.
    height, width = prediction.size
    kinds, names, whole, slanted, edge = set(), set(), True, False, []
    for file in files:
        if file is None:
            continue
        for kind, name, polygons, where in read_file(file):
            kinds.add(kind)
            if name is not None:
                names.add(name)
            points = np.concatenate([ring for polygon in polygons for ring in polygon])
            low, high = points.min(axis=0), points.max(axis=0)
            if (low < 0).any() or high[0] > width or high[1] > height:
                raise _outside(where, low, high, prediction.size)
            if high[0] > width - 1 or high[1] > height - 1:  # outside if the vertices are pixel centres
                edge.append((where, low, high))
            whole = whole and _whole(polygons)
            slanted = slanted or _slanted(polygons)
    if kinds & set(NUCLEUS_OBJECTS):
        prediction.objects = NUCLEUS_OBJECTS
    folded = {name.casefold() for name in names}
    prediction.skip_cells = bool(folded & set(NUCLEI_NAMES)) and bool(folded & set(CELL_NAMES))
    unknown = {name for name in names if prediction._type(name) is None and not (
        prediction.skip_cells and name.casefold() in CELL_NAMES)}
    if unknown:
        raise unknown_names_error(path, unknown)
    prediction.classified = any((prediction._type(name) or 0) > 0 for name in names)
    prediction.centres = whole and slanted
    if prediction.centres and edge:
        raise _outside(*edge[0], prediction.size)
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
