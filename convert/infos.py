"""Regenerate dataset_infos.json from the builder, with the split sizes of the official PanNuke data.

Split sizes come from the builder's own split function applied to the official per-fold tissue counts
(the split sizes depend only on how many patches each tissue has). --check-data-dir DIR compares them
with the split your copy of the data gives, reading only types.npy.
"""

import json
import logging
import os
import sys

import datasets
from datasets.utils.py_utils import asdict

import pannuke_imagemask as pim

from .common import CONFIGS, add_quiet_argument, command_parser, run_cli

logger = logging.getLogger(__name__)

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def checkout_infos_path(package_dir=PACKAGE_DIR):
    """dataset_infos.json of the source checkout the package runs from; None in an installed copy.

    A checkout holds pyproject.toml and pannuke_imagemask.py beside convert/ (an editable install runs from
    there too); an installed copy sits in site-packages, where writing the file would change the install.
    """
    root = os.path.dirname(package_dir)
    if all(os.path.isfile(os.path.join(root, name)) for name in ("pyproject.toml", "pannuke_imagemask.py")):
        return os.path.join(root, "dataset_infos.json")
    return None


# Patches per tissue in official folds 1, 2, 3 (Gamper et al.; the types.npy of each fold).
OFFICIAL_TISSUE_COUNTS = {
    "Adrenal_gland": (134, 148, 155),
    "Bile-duct": (159, 103, 158),
    "Bladder": (21, 61, 64),
    "Breast": (827, 749, 775),
    "Cervix": (155, 52, 86),
    "Colon": (478, 468, 494),
    "Esophagus": (155, 128, 141),
    "HeadNeck": (70, 169, 145),
    "Kidney": (37, 56, 41),
    "Liver": (65, 66, 93),
    "Lung": (80, 53, 51),
    "Ovarian": (54, 40, 52),
    "Pancreatic": (78, 89, 28),
    "Prostate": (77, 37, 68),
    "Skin": (59, 87, 41),
    "Stomach": (50, 48, 48),
    "Testis": (60, 79, 57),
    "Thyroid": (80, 84, 62),
    "Uterus": (17, 6, 163),
}


def official_tissues(fold):
    """A tissue list with the official fold's counts (the order does not change split sizes)."""
    return [tissue for tissue, counts in OFFICIAL_TISSUE_COUNTS.items() for _ in range(counts[fold - 1])]


def split_sizes_for(config, tissues_by_fold):
    """{split: patches} a config gives for these tissue lists with the default split, by the builder's function."""
    return {split: len(items) for split, items in pim.split_members(config, tissues_by_fold).items() if items}


def legacy_features(value):
    """Features as a dict that datasets 3 and 5 both read: List becomes [feature] or Sequence(length)."""
    if isinstance(value, dict):
        if value.get("_type") == "List":
            inner = legacy_features(value["feature"])
            if value.get("length", -1) == -1:
                return [inner]
            return {"feature": inner, "length": value["length"], "_type": "Sequence"}
        return {key: legacy_features(item) for key, item in value.items()}
    if isinstance(value, list):
        return [legacy_features(item) for item in value]
    return value


def dataset_infos():
    """{config name: DatasetInfo as a dict} for every config, on the official data."""
    tissues = {fold: official_tissues(fold) for fold in pim.FOLD_SIZES}
    infos = {}
    for config in pim.PanNukeImageMask.BUILDER_CONFIGS:
        info = pim.PanNukeImageMask(config_name=config.name).info.copy()
        info.config_name = config.name
        info.dataset_name = "pannuke_imagemask"
        info.builder_name = "pannuke_imagemask"
        info.version = config.version
        info.splits = datasets.SplitDict(dataset_name=info.dataset_name)
        for split, count in split_sizes_for(config, tissues).items():
            info.splits.add(datasets.SplitInfo(name=split, num_examples=count, dataset_name=info.dataset_name))
        base = f"{pim.BASE_URL}/"
        info.download_checksums = {
            base + pim.DOWNLOADS[fold][0]: {"num_bytes": pim.DOWNLOADS[fold][1], "checksum": pim.DOWNLOADS[fold][2]}
            for fold in config.folds
        }
        info.download_size = sum(pim.DOWNLOADS[fold][1] for fold in config.folds)
        as_dict = asdict(info)
        as_dict["features"] = legacy_features(info.features.to_dict())
        infos[config.name] = as_dict
    return infos


def render():
    return json.dumps(dataset_infos(), indent=4) + "\n"


def check_data_dir(data_dir, path=None):
    """(all equal, lines) comparing the default split sizes of the data in data_dir with those in path.

    Without a path, with the official sizes (what dataset_infos.json records, computed here).
    """
    if path is None:
        recorded = dataset_infos()
    else:
        with open(path) as f:
            recorded = json.load(f)
    lines, ok = [], True
    available = {}
    for config in pim.PanNukeImageMask.BUILDER_CONFIGS:
        try:
            files = pim.find_folds([data_dir], config.folds)
        except FileNotFoundError:
            lines.append(f"{config.name}: skipped (needs folds {', '.join(map(str, config.folds))})")
            continue
        for fold in config.folds:
            if fold not in available:
                available[fold] = pim.check_fold(files[fold])
        got = split_sizes_for(config, available)
        want = {name: s["num_examples"] for name, s in recorded[config.name]["splits"].items()}
        same = got == want
        ok &= same
        lines.append(f"{config.name}: {'OK' if same else 'DIFFERENT'} {got}" + ("" if same else f", expected {want}"))
    if not available:
        raise FileNotFoundError(f"{data_dir}: no PanNuke fold found; {pim.EXPECTED_LAYOUT}")
    return ok, lines


def _get_parser():
    parser = command_parser("infos", __doc__)
    parser.add_argument(
        "--out",
        help="where to write (default: dataset_infos.json of the checkout; an installed copy needs --out)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    parser.add_argument(
        "--check-data-dir",
        metavar="DIR",
        help="compare the split sizes of your folds with the official ones (with those in --out, if given)",
    )
    add_quiet_argument(parser)
    return parser


def out_path(args):
    """--out, or the checkout's dataset_infos.json; an installed copy refuses to write into site-packages."""
    path = args.out or checkout_infos_path()
    if path is None:
        raise ValueError(
            f"no checkout to hold dataset_infos.json ({PACKAGE_DIR} is an installed copy): pass --out PATH"
        )
    return path


def infos(args):
    if args.check_data_dir:
        ok, lines = check_data_dir(args.check_data_dir, args.out)
        print("\n".join(lines))
        return 0 if ok else 1
    out = out_path(args)
    text = render()
    if args.check:
        with open(out) as f:
            current = f.read()
        if current != text:
            print(f"{out} is stale: run `python -m convert infos`", file=sys.stderr)
            return 1
        return 0
    with open(out, "w") as f:
        f.write(text)
    logger.info("wrote %s (%s)", out, ", ".join(CONFIGS))
    return 0


def main(argv=None):
    return run_cli("infos", infos, _get_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
