"""How HoVer-NeXt's own PanNuke conversion differs from the conic export, on the built-in sample or real folds.

    python benchmarks/hovernext_conversion.py                       # the built-in sample (3 x 36 fake patches)
    python benchmarks/hovernext_conversion.py --data-dir ~/data/pannuke

hover_next_train's convert_pannuke_to_conic.py (read at its stored version, rewritten here in our words):
instances = scipy.ndimage.label (default cross, 4-connected) of the sum of mask channels 0..4 per patch, so
all nucleus pixels at once; classes = the highest class channel > 0 at each pixel. The conic export's labels
are the builder's instance_mask and semantic_mask. Counted per fold and in total: the builder's nuclei, the
HoVer-NeXt components, nuclei that share a component with another (merged), nuclei cut into several components
(split), pixels whose nucleus differs (not in a component that is exactly one builder nucleus), class pixels
that differ; then HoVer-NeXt's labels scored by evaluate against the builder's truth, as a CoNIC prediction.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
from scipy import ndimage

from convert.__main__ import main as cli_main


def hovernext_labels(mask):
    """(instances, classes) of one raw (H, W, 6) mask by convert_pannuke_to_conic.py's rule."""
    instances = ndimage.label(np.sum(mask[..., :-1], axis=-1).astype(int))[0]
    classes = np.max((mask[..., :-1] > 0) * np.arange(1, 6), axis=-1)
    return instances, classes


def compare(ours, theirs):
    """Counts of one patch: (nuclei, components, merged, split, nucleus pixels, pixels differing, class pixels
    differing)."""
    instance, semantic = ours[..., 0], ours[..., 1]
    components, classes = theirs
    pairs = {(int(a), int(b)) for a, b in zip(instance[instance > 0], components[instance > 0])}
    per_nucleus, per_component = {}, {}
    for a, b in pairs:
        per_nucleus.setdefault(a, set()).add(b)
        per_component.setdefault(b, set()).add(a)
    merged = sum(any(len(per_component[b]) > 1 for b in c) for c in per_nucleus.values())
    split = sum(len(c) > 1 for c in per_nucleus.values())
    exact = {a for a, c in per_nucleus.items() if len(c) == 1 and len(per_component[next(iter(c))]) == 1}
    differing = int(((instance > 0) & ~np.isin(instance, list(exact))).sum())
    pixels = int((instance > 0).sum())
    return [len(per_nucleus), len(per_component), merged, split, pixels, differing, int((semantic != classes).sum())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="the real folds (default: the built-in sample)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = ["--data-dir", args.data_dir] if args.data_dir else ["--sample"]
        cache = ["--cache-dir", os.path.join(tmp, "cache")]
        out = os.path.join(tmp, "conic")
        export = ["export", *source, *cache, "--format", "conic", "--config", "folds", "--out", out, "--quiet"]
        assert cli_main(export) == 0
        if args.data_dir:
            import pannuke_imagemask as pim

            found = pim.find_folds([args.data_dir], (1, 2, 3))
        else:
            from convert.common import sample_dir
            from convert.sample import fold_paths

            root = sample_dir((1, 2, 3), os.path.join(tmp, "cache"))
            found = {fold: fold_paths(root, fold, "kaggle") for fold in (1, 2, 3)}
        total = np.zeros(7, dtype=np.int64)
        header = ["nuclei", "components", "merged", "split", "nucleus pixels", "pixels differing", "class differs"]
        print("| fold", *header, "HoVer-NeXt's labels scored: bPQ, mPQ, F1 |", sep=" | ")
        for fold in (1, 2, 3):
            masks = np.load(found[fold]["masks"], mmap_mode="r")
            ours = np.load(os.path.join(out, "masks", f"fold{fold}", "labels.npy"), mmap_mode="r")
            theirs = [hovernext_labels(np.asarray(masks[i])) for i in range(len(masks))]
            counts = np.sum([compare(np.asarray(ours[i]), t) for i, t in enumerate(theirs)], axis=0)
            total += counts
            pred = os.path.join(tmp, f"hovernext_fold{fold}.npy")
            np.save(pred, np.stack([np.stack(t, axis=-1) for t in theirs]).astype(np.int64))
            report = os.path.join(tmp, f"fold{fold}.json")
            argv = ["evaluate", *source, *cache, "--config", "folds", "--split", f"fold{fold}", "--pred", pred]
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # only its --json is read
                assert cli_main([*argv, "--pred-format", "conic", "--json", report, "--quiet"]) == 0
            with open(report) as f:
                result = json.load(f)
            scores = f"{result['bPQ']:.4f} {result['mPQ']:.4f} {result['detection']['f1']:.4f}"
            print(f"| fold{fold}", *counts.tolist(), f"{scores} |", sep=" | ")
        print("| all", *total.tolist(), " |", sep=" | ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
