"""Verify an exported tree: re-read every file and compare it with the source, as export.json describes it.

Every format (export.json's "format"; imagemask when absent) is checked file by file. PNG files and
arrays must match exactly; JPEG images within a mean absolute difference of 4 levels per
channel value. Prints each difference with its file name; exit 0 when all match, 1 otherwise.
"""

import fnmatch
import json
import logging
import os
import re
import sys
from types import SimpleNamespace

from .common import CONFIGS, add_quiet_argument, build_from_args, command_parser, progress_bar, run_cli, source_of
from .files import Picture, Report, kind_of
from .formats import FORMAT_NAMES, get_format, undecoded

logger = logging.getLogger(__name__)

MANIFEST_KEYS = ("source", "config", "split_seed", "split_ratios", "mask_style", "image_format", "size")
OPTION_KEYS = ("mask_style", "image_format", "size")
_RELEASE = re.compile(r"^\d+\.\d+\.\d+")
# What export writes for each key verify reads (a damaged export.json is one line, never a traceback).
MANIFEST_VALUES = {
    "format": lambda v: v in FORMAT_NAMES,
    "version": lambda v: isinstance(v, str) and bool(_RELEASE.match(v)),
    "source": lambda v: (
        isinstance(v, dict) and isinstance(v.get("data_dir"), (str, type(None))) and isinstance(v.get("sample"), bool)
    ),
    "config": lambda v: v in CONFIGS,
    "split_seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "split_ratios": lambda v: isinstance(v, list) and len(v) == 3 and all(isinstance(r, (int, float)) for r in v),
    "mask_style": lambda v: v is None or isinstance(v, str),
    "image_format": lambda v: v is None or isinstance(v, str),
    "size": lambda v: isinstance(v, int) and v > 0,
    "splits": lambda v: isinstance(v, dict),
}
# The export's own reports beside the format's files: export.json (read before anything else) and the pictures.
REPORTS = (Report("export.json"), Picture("statistics.png"), Picture("samples.png"))


def _release(version):
    return tuple(int(part) for part in version.split(".")[:3])


def list_files(root):
    """Every file under root, at any depth, as relative paths with "/" between folders."""
    found = set()
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return found


def _matches(path, pattern):
    """fnmatch per path component: `labels/*.cache` is labels/train.cache, not labels/train/x.cache."""
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, wanted))


def file_problems(root, files, actual, cache):
    """(the paths described, "path: what" lines of the files among them that do not hold what they should)."""
    paths, problems = set(), []
    for file in files:
        paths.add(file.path)
        if file.path in actual:
            try:
                found = file.problems(os.path.join(root, file.path), cache)
            except OSError as exc:  # unreadable (permissions, a folder in its place): a problem, not a crash
                found = [f"cannot be read ({exc.strerror or exc})"]
            problems += [f"{file.path}: {' '.join(p.splitlines())}" for p in found]  # one line each
    return paths, problems


def tree_problems(fmt, root, dataset_dict, options, progress=None):
    """Every difference between the tree at root and the format's description of it, as "path: what" lines.

    Missing files first, then files that are not part of the export (at any depth; those a framework is
    known to leave there are accepted), then the files that do not hold what they should. The format
    describes each patch's files one patch at a time, as export wrote them.
    """
    actual, cache = list_files(root), {}
    options = {**options, "rows": {split: ds.num_rows for split, ds in dataset_dict.items()}}
    expected, problems = file_problems(root, REPORTS, actual, cache)
    records = {split: [] for split in dataset_dict}
    for split, dataset in dataset_dict.items():
        for position, row in enumerate(undecoded(dataset)):
            paths, found = file_problems(root, fmt.patch_files(split, position, row, options), actual, cache)
            expected |= paths
            problems += found
            records[split].append(fmt.record(split, position, row, options))
            if progress:
                progress(1)
    paths, found = file_problems(root, fmt.tree_files(dataset_dict, records, options), actual, cache)
    expected |= paths
    problems += found
    foreign = [p for p in sorted(actual - expected) if not any(_matches(p, c) for c in fmt.consumer_files)]
    missing = [f"{path}: missing" for path in sorted(expected - actual)]
    return missing + [f"{path}: not part of the export" for path in foreign] + problems


def verify_tree(root, dataset_dict, manifest, quiet=False):
    """All differences between the tree at root and the builder's dataset, as 'file: what' lines."""
    fmt = get_format(manifest.get("format", "imagemask"))  # 1.0 wrote no format: its trees are imagemask
    written = manifest.get("version", "1.0.0")
    if fmt.changed_in and _release(written) < _release(fmt.changed_in):
        # Every file would differ; one line says why instead of thousands.
        return [f"export.json: written by {written}; {fmt.name} files changed in {fmt.changed_in}: export again"]
    options = {key: manifest[key] for key in OPTION_KEYS}
    total = sum(ds.num_rows for ds in dataset_dict.values())
    with progress_bar(total, "Verifying", quiet) as bar:
        problems = tree_problems(fmt, root, dataset_dict, options, progress=bar.update)
    recorded = manifest.get("splits", {})
    actual_splits = {fmt.split_dir(s): ds.num_rows for s, ds in dataset_dict.items()}
    if recorded != actual_splits:
        problems.append(f"export.json: splits {recorded}, the source gives {actual_splits}")
    return problems


def _get_parser():
    parser = command_parser("verify", __doc__)
    parser.add_argument("dir", help="an exported tree (holds export.json)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help="the PanNuke folds to compare with (default: as recorded in export.json)")
    source.add_argument("--sample", action="store_true", help="compare with the built-in FAKE sample")
    parser.add_argument("--cache-dir", help="datasets cache folder (default: the Hugging Face datasets cache)")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for building the source, if not cached")
    add_quiet_argument(parser)
    return parser


def read_manifest(root):
    """export.json of the tree at root, checked to be what export writes: else one ValueError line."""
    path = os.path.join(root, "export.json")
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {root} a tree written by export?") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: is not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        kind = kind_of(manifest)  # a user error: one line, as ValueError (USER_ERRORS)
        raise ValueError(f"{path}: holds {kind}, expected an object; is {root} a tree written by export?")  # noqa: TRY004
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}; is {root} a tree written by export?")
    wrong = [key for key, valid in MANIFEST_VALUES.items() if key in manifest and not valid(manifest[key])]
    if wrong:
        shown = ", ".join(f"{key} {json.dumps(manifest[key])}" for key in wrong)
        raise ValueError(f"{path}: {shown} not as export writes {'it' if len(wrong) == 1 else 'them'}")
    return manifest


def verify(args):
    manifest = read_manifest(args.dir)
    source = source_of(args) if args.data_dir or args.sample else manifest["source"]
    options = SimpleNamespace(
        config=manifest["config"],
        split_seed=manifest["split_seed"],
        split_ratios=manifest["split_ratios"],
        num_proc=args.num_proc,
        cache_dir=args.cache_dir,
        **source,
    )
    dataset_dict, _ = build_from_args(options)
    problems = verify_tree(args.dir, dataset_dict, manifest, args.quiet)
    for problem in problems:
        print(problem)
    checked = sum(ds.num_rows for ds in dataset_dict.values())
    if problems:
        print(f"{args.dir}: {len(problems)} difference(s) in {checked} patches", file=sys.stderr)
        return 1
    logger.info("%s: all %d patches and every file match the source", args.dir, checked)
    return 0


def main(argv=None):
    return run_cli("verify", verify, _get_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
