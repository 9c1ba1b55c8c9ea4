"""Class names of the polygon layouts (geojson, cellvit) to our types.

A name is one of ours, case-insensitively ("Neoplastic" .. "Epithelial", as CellViT's PanNuke head and our
`geojson` export write them), or a name that says "a nucleus, no class" (InstanSeg's "Nuclei", CellViT's
binary "nuclei" / "Cell", QuPath's "Detection"), or one the user maps with `--class-map NAME=CLASS,...`,
CLASS one of ours or `none` (a nucleus without a class). Any other name is an error that names it.
"""

import pannuke_imagemask as pim

from .base import PredictionError

TYPES = {name: k + 1 for k, name in enumerate(pim.NUCLEUS_CLASSES)}  # HoVer-Net's type ids 1..5
NO_CLASS = "none"
# Names that mean "a nucleus" without a class: InstanSeg's "Nuclei", CellViT's binary {1: "nuclei"} (pip)
# and {1: "Cell"} (repo), QuPath's and InstanSeg's WSI "Detection" / "Nucleus".
UNCLASSIFIED = ("nucleus", "nuclei", "detection", "cell")


def parse_class_map(text):
    """{name (casefolded): type 0..5} of `NAME=CLASS,...`; ValueError with one line if it is not that."""
    mapping = {}
    for item in text.split(","):
        name, sep, target = (part.strip() for part in item.partition("="))
        target = target.casefold()
        if not sep or not name or (target not in TYPES and target != NO_CLASS):
            raise ValueError(
                f"--class-map wants NAME=CLASS,... with CLASS one of {', '.join(TYPES)} or {NO_CLASS}; got {item!r}"
            )
        mapping[name.casefold()] = TYPES.get(target, 0)
    return mapping


def type_of(name, class_map):
    """The type 0..5 of a class name (0: a nucleus without a class), or None if the name is not known."""
    key = name.casefold()
    if key in class_map:
        return class_map[key]
    if key in TYPES:
        return TYPES[key]
    if key in UNCLASSIFIED:
        return 0
    return None


def unknown_names_error(where, names):
    shown = ", ".join(repr(name) for name in sorted(names))
    return PredictionError(
        f"{where}: class name(s) {shown} are not ours ({', '.join(TYPES)}); map them with --class-map NAME=CLASS,..."
    )
