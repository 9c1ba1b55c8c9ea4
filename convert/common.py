"""What the commands share: the source and split options, the built-in sample, error reporting."""

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import tempfile

import datasets
import numpy as np
from filelock import FileLock
from tqdm import tqdm

import pannuke_imagemask as pim

from . import __version__
from .sample import SAMPLE_FOLDER, SAMPLE_PATCHES, SAMPLE_VERSION, kaggle_fold_dir, write_fold

PROG = "pannuke-imagemask"
CONFIGS = [config.name for config in pim.PanNukeImageMask.BUILDER_CONFIGS]

# Errors of the user's making (bad data, bad paths, refused overwrite): one line, no traceback.
USER_ERRORS = (pim.PanNukeFormatError, OSError, ValueError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it says something: not None or False, not already in the help."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(default, (list, tuple)):  # as it is typed: 0.8 0.15 0.05, not [0.8, 0.15, 0.05]
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def command_parser(name, doc):
    """A command's parser: its prog and description, and --version (every command has it)."""
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=doc, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def add_quiet_argument(parser):
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only, no progress bars")


def progress_bar(total, desc, quiet=False):
    """The commands' progress bar: none with --quiet, else on a terminal only (tqdm's disable=None)."""
    return tqdm(total=total, unit="patch", desc=desc, disable=True if quiet else None)


def add_source_arguments(
    parser, several_configs=False, download=True, work="building and writing", config_default="part1"
):
    """--data-dir | --sample, the config and split options, --num-proc, --cache-dir, --quiet.

    download: whether no source means the official download (else one of the two is required); work: what
    the processes of --num-proc do in this command; config_default: the --config default, shown as is
    (a text such as "part1; folds with --protocol" leaves the option None, for the command to decide).
    """
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        help="folder with the unpacked PanNuke folds (Kaggle 'Part N' or official 'Fold N'); "
        + ("without it and without --sample the official zips are downloaded" if download else "this or --sample"),
    )
    source.add_argument(
        "--sample",
        action="store_true",
        help=f"use the built-in sample: {SAMPLE_PATCHES} FAKE patches per fold in the real format, for trying the tool",
    )
    if several_configs:
        parser.add_argument(
            "--config",
            choices=CONFIGS,
            nargs="+",
            action="extend",
            help=f"which configs: one or more of {', '.join(CONFIGS)}, in one --config or several (default: part1)",
        )
    else:
        parser.add_argument(
            "--config",
            choices=CONFIGS,
            default=config_default if config_default in CONFIGS else None,
            help="which folds and which splits"
            + ("" if config_default in CONFIGS else f" (default: {config_default})"),
        )
    parser.add_argument("--split-seed", type=int, default=pim.DEFAULT_SPLIT_SEED, help="seed of the keyed-hash split")
    parser.add_argument(
        "--split-ratios",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VALID", "TEST"),
        default=list(pim.DEFAULT_SPLIT_RATIOS),
        help="split proportions, summing to 1 (ignored by --config folds)",
    )
    parser.add_argument("--num-proc", type=int, default=1, help=f"processes for {work}")
    parser.add_argument("--cache-dir", help="datasets cache folder (default: the Hugging Face datasets cache)")
    add_quiet_argument(parser)


def configure_logging(args):
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    datasets.logging.disable_propagation()  # it prints through a handler of its own: otherwise every line twice
    if getattr(args, "quiet", False):
        datasets.disable_progress_bars()


def refuse_non_empty(path, force, verb):
    """Refuse a file, or a non-empty folder without --force, at path; one line says which."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not force:
        raise FileExistsError(f"{path} exists and is not empty; pass --force to {verb} it")


BLOCK = 4096  # a file takes whole filesystem blocks
REPORTS_BYTES = 8 << 20  # export.json and the pictures: a few MB at most


class NotEnoughSpaceError(OSError):
    """The target filesystem has less free space than the output needs."""


def disk_bytes(file_sizes):
    """Bytes that files of these sizes take on disk: each rounded up to whole blocks, plus the reports."""
    return sum(-(-int(size) // BLOCK) * BLOCK for size in file_sizes) + REPORTS_BYTES


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def check_free_space(target, needed):
    """Refuse, before writing anything, an output of `needed` bytes that the target's filesystem cannot hold."""
    probe = target
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe) or "."
    free = shutil.disk_usage(probe).free
    if needed <= free:
        return
    replacing = os.path.isdir(target) and os.listdir(target)
    also = (
        "; with --force the old tree stays until the new one is complete, so there must be room for both"
        if replacing
        else ""
    )
    raise NotEnoughSpaceError(
        errno.ENOSPC, f"{target}: not enough free space: needs about {_human(needed)}, {_human(free)} available{also}"
    )


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staging_dir(target):
    """A new hidden folder beside target (so renames into place are atomic), removed on exit unless moved."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".incomplete", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; what is moved out of it should not be
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sample_dir(folds, cache_dir=None):
    """The built-in sample's one folder, shared by every config; each fold is written on first use, once.

    A fold appears whole or not at all: it is written in a hidden staging folder and renamed into place.
    A lock per fold makes a second process wait for the first instead of writing it again, and lets the
    next writer remove what a killed one left (hidden, so never read as a fold).
    """
    root = os.path.join(cache_dir or datasets.config.HF_DATASETS_CACHE, SAMPLE_FOLDER, f"v{SAMPLE_VERSION}")
    for fold in folds:
        target = kaggle_fold_dir(root, fold)
        if os.path.isdir(target):
            continue
        name = os.path.basename(target)
        os.makedirs(root, exist_ok=True)
        with FileLock(os.path.join(root, f".{name}.lock")):
            if os.path.isdir(target):  # written while this process waited for the lock
                continue
            for left in os.listdir(root):  # staging folders of a killed writer: nobody else holds the lock
                if left.startswith(f".{name}.") and left.endswith(".incomplete"):
                    shutil.rmtree(os.path.join(root, left), ignore_errors=True)
            with staging_dir(target) as tmp:
                write_fold(tmp, fold, SAMPLE_PATCHES, "kaggle")
                try:
                    os.rename(kaggle_fold_dir(tmp, fold), target)
                except OSError:
                    if not os.path.isdir(target):  # else written meanwhile by a writer the lock did not stop
                        raise
    return root


def nuclei_per_class(labels):
    """How many nuclei of each class (index = nucleus label, as pim.NUCLEUS_CLASSES) these labels hold.

    The one count behind export's statistics, CellViT's cell_count.csv and the card's tables.
    """
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=pim.NUM_CLASS_CHANNELS).tolist()


def source_of(args):
    """{"data_dir", "sample"} as recorded in export.json."""
    return {"data_dir": os.path.abspath(args.data_dir) if args.data_dir else None, "sample": bool(args.sample)}


def config_named(name):
    """The builder config of a name (the names are argparse choices, so it exists)."""
    return next(c for c in pim.PanNukeImageMask.BUILDER_CONFIGS if c.name == name)


def resolve_source(args, folds, required=False):
    """The folder the source options name: the sample's (written on first use), --data-dir, or None to download.

    Also the checks every command makes of them: --num-proc at least 1, --data-dir an existing folder, and
    with required (a command that reads the folds itself), a source given at all.
    """
    if args.num_proc < 1:
        raise ValueError(f"--num-proc must be at least 1, got {args.num_proc}")
    if args.sample:
        logging.getLogger(__name__).warning("using the built-in sample: FAKE patches, not PanNuke data")
        return sample_dir(folds, args.cache_dir)
    if not args.data_dir:
        if required:
            raise ValueError("one of --data-dir or --sample is required")
        return None
    data_dir = os.path.abspath(args.data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such folder (--data-dir)")
    return data_dir


def build_from_args(args):
    """Build the DatasetDict the options ask for; returns (dataset_dict, source)."""
    data_dir = resolve_source(args, config_named(args.config).folds)
    dataset_dict = pim.build(
        args.config,
        data_dir=data_dir,
        cache_dir=args.cache_dir,
        num_proc=args.num_proc if args.num_proc > 1 else None,
        split_seed=args.split_seed,
        split_ratios=tuple(args.split_ratios),
    )
    return dataset_dict, source_of(args)


def one_line(exc):
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, NotEnoughSpaceError):
        # Ran out while writing (estimate too low, or another writer): the staging folder is gone by now.
        return (
            f"no space left on the device while writing {os.path.basename(str(exc.filename or 'the output'))}; "
            "nothing partial was left and any previous output is unchanged"
        )
    if isinstance(exc, OSError) and exc.filename is None and exc.strerror and len(exc.args) == 2:
        return " ".join(exc.strerror.split())
    return " ".join(str(exc).split()) or type(exc).__name__


def _terminate(signum, frame):
    raise KeyboardInterrupt


_HELD = {"sigterm": False}  # whether this thread blocked SIGTERM for a fork (the child inherits the flag)


def _hold_sigterm_for_fork():
    """Before a fork: block SIGTERM, so that the child cannot receive it until its handler is the default.

    Pools (datasets' inside download_and_prepare, the export's own) end their workers with SIGTERM. A
    worker that inherited _terminate raises KeyboardInterrupt instead, possibly while holding the task
    queue's lock, and the next worker then waits for that lock forever: the whole command hangs. Resetting
    the handler in the child is not enough on its own: a pool terminated right after it was made (its tasks
    done before a worker was even scheduled) signals a child that has not reset it yet, and Python runs
    the handler of the moment it looks at the signal, by then the default, which it skips as if the signal
    had been caught: the worker lives on and the pool waits for it forever. Blocked, the signal waits in
    the child until its handler is the default, and then ends it.
    """
    if signal.getsignal(signal.SIGTERM) is _terminate:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        _HELD["sigterm"] = True


def _release_sigterm():
    if _HELD["sigterm"]:
        _HELD["sigterm"] = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _default_sigterm_in_child():
    """After a fork, in the child: SIGTERM ends a worker (the default), never runs the parent's clean-up."""
    if signal.getsignal(signal.SIGTERM) is _terminate:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _release_sigterm()  # a SIGTERM that came meanwhile is delivered now, with the default action


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_hold_sigterm_for_fork, after_in_parent=_release_sigterm, after_in_child=_default_sigterm_in_child
    )


def run_cli(name, function, args):
    """Run a command: exit 0 done, 1 failed (one line on stderr for user errors), 130 interrupted."""
    configure_logging(args)
    previous = signal.signal(signal.SIGTERM, _terminate)  # clean up on kill as on Ctrl-C
    try:
        return function(args)
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"{PROG} {name}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
