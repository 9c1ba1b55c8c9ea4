"""pannuke-imagemask: export PanNuke as an image/mask folder tree, verify it, publish it to the Hub.

Commands (each has --help):
  export   write the builder's splits: an image/mask tree, or COCO, YOLO, HoVer-Net, PanNuke arrays,
           CellViT, nnU-Net or Cellpose folders
  verify   re-read an export (any format) and compare every file with the source
  push     publish Parquet and a dataset card to the Hub (or --local-dir)
  evaluate score predictions on a split (or the three-split protocol): mPQ, bPQ, detection and class F1
  infos    regenerate dataset_infos.json from the builder
"""

import importlib
import sys

from . import __version__

COMMANDS = ("export", "verify", "push", "evaluate", "infos")


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


if __name__ == "__main__":
    sys.exit(main())
