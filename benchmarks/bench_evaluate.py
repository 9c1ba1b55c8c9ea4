"""Speed and memory of `evaluate` against the per-nucleus oracle of the tests, measured in one run.

    python benchmarks/bench_evaluate.py                  # a fake Part 1: 2,656 patches, 12.5 GB of float64
    python benchmarks/bench_evaluate.py --patches 300    # quicker

Writes (or reuses, with benchmarks/bench.py) a fake fold in the real format and a perturbed prediction
masks.npy, then times the command on all patches (one split holding them all) at 1 and 2 processes,
and the oracle (one boolean mask per nucleus, as the official script) on the first patches. Memory is
the peak anonymous RSS (RssAnon) summed over the process tree.
"""

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests"), HERE]

import numpy as np
import pq_oracle
from bench import PeakMemory

import pannuke_imagemask as pim
from convert.__main__ import main as cli_main
from convert.sample import PATCH, fold_paths, write_fold


def perturbed(truth, rng):
    """A plausible prediction: every nucleus shifted a little, some dropped, ids renumbered sparsely."""
    dy, dx = rng.integers(-3, 4, size=2)
    pred = np.roll(truth[..., :5], (int(dy), int(dx)), axis=(0, 1)).astype(np.uint16)
    for c in range(5):
        ids = np.unique(pred[..., c])[1:]
        dropped = ids[rng.random(len(ids)) < 0.1]
        pred[..., c][np.isin(pred[..., c], dropped)] = 0
    return pred


def write_prediction(path, masks, seed=0):
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(
        path + ".incomplete", mode="w+", dtype=np.uint16, shape=(len(masks), PATCH, PATCH, 5)
    )
    for index in range(len(masks)):
        out[index] = perturbed(masks[index], rng)
    out.flush()
    del out
    os.replace(path + ".incomplete", path)


def run_cli(data_dir, pred, per_patch, num_proc):
    argv = ["evaluate", "--pred", pred, "--data-dir", data_dir, "--split-ratios", "0", "0", "1"]
    argv += ["--per-patch", per_patch, "--num-proc", str(num_proc), "--quiet"]
    with PeakMemory() as memory:
        start = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # the report table; the benchmark prints its own
            code = cli_main(argv)
        seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"evaluate failed with exit code {code}")
    return {"seconds": seconds, "peak_rss_anon": memory.peak}


def run_oracle(masks, pred, n):
    """The oracle reads the same memory-mapped arrays, patch by patch."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        scores = [pq_oracle.patch_scores(np.asarray(masks[i]), np.asarray(pred[i])) for i in range(n)]
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_anon": memory.peak, "scores": scores}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=pim.FOLD_SIZES[1], help="patches in the fake fold (2656)")
    parser.add_argument("--oracle-patches", type=int, default=60, help="patches the oracle scores (default 60)")
    parser.add_argument("--workdir", default=os.path.join(HERE, "out"), help="scratch folder")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    n = args.patches
    data_dir = os.path.join(args.workdir, f"fold1-{n}")
    paths = fold_paths(data_dir, 1, "kaggle")
    if not os.path.exists(paths["types"]):
        os.makedirs(args.workdir, exist_ok=True)
        needed = n * PATCH * PATCH * ((3 + 6) * 8 + 5 * 2)  # float64 images and masks, uint16 prediction
        free = shutil.disk_usage(args.workdir).free
        if free < needed * 1.2:
            sys.exit(f"{args.workdir}: {free / 1e9:.1f} GB free, the fold and prediction need {needed / 1e9:.1f} GB")
        start = time.perf_counter()
        write_fold(data_dir, 1, n, "kaggle")
        print(f"wrote fake fold of {n} patches in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    masks = np.lib.format.open_memmap(paths["masks"], mode="r")
    pred_path = os.path.join(args.workdir, f"evaluate-pred-{n}.npy")
    if not os.path.exists(pred_path):
        write_prediction(pred_path, masks)
    pred = np.lib.format.open_memmap(pred_path, mode="r")
    for path in (paths["masks"], pred_path):  # every run reads from page cache, none from disk
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass

    per_patch = os.path.join(args.workdir, "evaluate-per-patch.csv")
    k = min(args.oracle_patches, n)
    r = {"patches": n, "oracle_patches": k, "cpus": os.cpu_count(), "numpy": np.__version__}
    run_oracle(masks, pred, min(k, 4))  # warm-up: imports, allocator
    r["oracle"] = run_oracle(masks, pred, k)
    for num_proc in (1, 2):
        r[f"evaluate_{num_proc}"] = run_cli(data_dir, pred_path, per_patch, num_proc)
    with open(per_patch, newline="") as f:
        rows = list(csv.reader(f))[1 : k + 1]
    fast = np.array([[float(v) if v else np.nan for v in row[4:]] for row in rows])
    oracle = np.array(r["oracle"].pop("scores"))
    r["max_difference_to_oracle"] = float(np.nanmax(np.abs(fast - oracle), initial=0.0))
    if not np.array_equal(np.isnan(fast), np.isnan(oracle)) or r["max_difference_to_oracle"] > 1e-12:
        raise RuntimeError(f"evaluate differs from the oracle by {r['max_difference_to_oracle']}")

    oracle_rate = k / r["oracle"]["seconds"]
    rows = [("oracle: one boolean mask per nucleus (tests/pq_oracle.py)", "oracle", oracle_rate, "1.0x")]
    for num_proc in (1, 2):
        rate = n / r[f"evaluate_{num_proc}"]["seconds"]
        rows.append(
            (
                f"evaluate --num-proc {num_proc}, whole command",
                f"evaluate_{num_proc}",
                rate,
                f"{rate / oracle_rate:.1f}x",
            )
        )
    agreement = f"largest difference to the oracle {r['max_difference_to_oracle']:.1e}"
    lines = [
        f"Fake fold of {n} patches, {os.cpu_count()} CPUs, oracle on the first {k}; {agreement}:",
        "",
        "| run | patches/s | vs oracle | peak anonymous RSS (tree) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, key, rate, ratio in rows:
        lines.append(f"| {name} | {rate:.1f} | {ratio} | {r[key]['peak_rss_anon'] / 2**20:.0f} MiB |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
