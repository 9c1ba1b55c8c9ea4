"""geojson: DIR/{split}/<id>.png beside <id>.geojson, one QuPath detection per nucleus, exact pixel-edge polygons.

QuPath's conventions (qupath-core PathObjectTypeAdapters `write`, GsonTools `PathClassTypeAdapter`): a
FeatureCollection; each Feature a stable `id` (a UUID, as QuPath writes since v0.4: uuid5 of the patch and
nucleus ids, the same in every export), the nucleus' outline as `geometry`, and `properties` with
`objectType` "detection", `classification` {name, color} (the class, capitalised, and its colour of the
colour masks, pannuke_imagemask.CLASS_COLORS), and ours: `nucleus_id` (the builder's instance id) and
`class` (its class name). Coordinates are full-resolution pixels, origin top-left, (x, y) on pixel corners:
convert/polygons.py `trace`, so that "pixel centre inside" gives back every pixel of the nucleus and no
other (holes are interior rings, a nucleus in pieces a MultiPolygon).
"""

import uuid

import numpy as np
import pyarrow.compute as pc

import pannuke_imagemask as pim

from ..files import Json, Png
from ..images import decode, png_lengths
from ..polygons import geojson_geometry, trace
from . import Format

# The namespace of the features' UUIDs: uuid5 of this and "<patch id>/<nucleus id>".
NAMESPACE = uuid.UUID("6d1c5a3e-2b8f-5c4d-9e7a-0f1b2c3d4e5f")
CLASSIFICATIONS = [
    {"name": name.capitalize(), "color": [int(v) for v in pim.CLASS_COLORS[k + 1]]}
    for k, name in enumerate(pim.NUCLEUS_CLASSES)
]
# Bytes of a Feature besides its coordinates, and of one "[x,y]," vertex (x, y <= 9999): the estimate's bound.
FEATURE_BYTES, VERTEX_BYTES = 512, 12


def feature_id(patch, nucleus):
    return str(uuid.uuid5(NAMESPACE, f"{patch}/{nucleus}"))


def feature_collection(row):
    """The FeatureCollection of one builder row (its instance mask decoded), one Feature per nucleus in id order."""
    polygons = trace(decode(row["instance_mask"]["bytes"]))
    features = []
    for nucleus in row["nuclei"]:
        label = nucleus["label"]
        features.append(
            {
                "type": "Feature",
                "id": feature_id(row["id"], nucleus["id"]),
                "geometry": geojson_geometry(polygons[nucleus["id"]]),
                "properties": {
                    "objectType": "detection",
                    "classification": CLASSIFICATIONS[label],
                    "nucleus_id": nucleus["id"],
                    "class": pim.NUCLEUS_CLASSES[label],
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


class GeoJson(Format):
    def patch_files(self, split, position, row, options):
        stem = f"{self.split_dir(split)}/{row['id']}"
        return [
            Png(f"{stem}.png", row["image"]["bytes"]),
            Json(f"{stem}.geojson", feature_collection(row), compact=True),
        ]

    def estimate(self, dataset_dict, options):
        sizes = []
        for dataset in dataset_dict.values():
            sizes += png_lengths(dataset, "image")
            nuclei = dataset.data.table.column("nuclei").combine_chunks()
            areas = pc.struct_field(pc.list_flatten(nuclei), "area").to_numpy(zero_copy_only=False)
            # A ring's corners are at most its pixel edges (4 per pixel), and each ring repeats its first
            # corner; there are at most as many rings as pixels.
            vertices = int((5 * np.asarray(areas, dtype=np.int64)).sum())
            sizes.append(64 * dataset.num_rows + FEATURE_BYTES * len(areas) + VERTEX_BYTES * vertices)
        return sizes


FORMAT = GeoJson()
