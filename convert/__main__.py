"""pannuke-imagemask: export PanNuke as an image/mask folder tree, verify it, publish it to the Hub.

Commands (each has --help):
  export   write the builder's splits: an image/mask tree, or COCO, YOLO, HoVer-Net, PanNuke arrays,
           CellViT, nnU-Net, Cellpose, CoNIC arrays, HoVer-Net .mat or QuPath GeoJSON folders
  verify   re-read an export (any format) and compare every file with the source
  push     publish Parquet and a dataset card to the Hub (or --local-dir)
  evaluate score predictions on a split (or the three-split protocol): mPQ, bPQ, detection and class F1,
           every number of the papers and benchmarks (--metrics all), intervals, comparison, an HTML report
  infos    regenerate dataset_infos.json from the builder
"""

import ctypes
import gc
import importlib
import sys

from . import __version__

COMMANDS = ("export", "verify", "push", "evaluate", "infos")
# glibc's mallopt parameters (malloc.h) and the values the program sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_OPTIONS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20), (M_TOP_PAD, 16 << 20))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"pannuke-imagemask {__version__}")
        return 0
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in COMMANDS:
        print(f"pannuke-imagemask: error: unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{argv[0]}", __package__)
    return module.main(argv[1:])


def keep_freed_memory():
    """Let glibc's malloc reuse freed blocks of up to 32 MiB instead of handing them back to the kernel.

    Every command allocates and frees arrays of a few hundred KB to a few MB per patch. Above glibc's mmap
    threshold (128 KiB, raised only as such blocks are freed) each is a fresh mapping whose pages the kernel
    faults in and zeroes again, patch after patch: about 500 page faults a patch, and 40% of evaluate's time
    on the official float64 layout (docs/benchmarks.md). Now they come from the heap, which keeps up to
    64 MiB free before trimming. Other C libraries (musl, macOS, Windows) keep their defaults.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt (musl)
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for option, value in MALLOC_OPTIONS:
        mallopt(option, value)


def run():
    """The program's entry point (the console script and `python -m convert`); in-process callers use main().

    A command's libraries (datasets, pandas, scipy) are a few hundred thousand objects that live until the
    process ends. They are imported with the cyclic collector paused and then frozen (gc.freeze), so that
    neither the imports nor the interpreter's last collections at exit walk them: 0.18 s of evaluate's
    1.5 s on 400 patches (docs/benchmarks.md), and forked workers share those pages untouched. main()
    alone leaves the collector as it is, for callers that run many commands in one process (the tests).
    """
    argv = sys.argv[1:]
    keep_freed_memory()
    if argv[:1] and argv[0] in COMMANDS:
        gc.disable()
        try:
            importlib.import_module(f".{argv[0]}", __package__)
        finally:
            gc.freeze()
            gc.enable()
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
