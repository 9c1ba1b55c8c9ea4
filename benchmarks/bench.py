"""Speed and memory of the builder (and the export) against a bare loop, measured in one run.

    python benchmarks/bench.py                  # a fake Part 1: 2,656 patches, 12.5 GB of float64
    python benchmarks/bench.py --patches 300    # quicker

Writes a fake fold in the real format (kept for later runs), then times: a bare loop (memory-mapped
read + the builder's own conversions + PNG encoding, no `datasets`), the builder at num_proc 1 and 2,
and the folder export at 1 and 2 processes against a bare export loop. Memory is the peak anonymous
RSS (RssAnon) summed over the process tree: mapped file pages are page cache, not the tool's memory.
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

import pannuke_imagemask as pim
from convert.sample import fold_paths, write_fold


def _rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree_rss_anon_kb(pid):
    """RssAnon of a process and all its descendants, in kB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += _rss_anon_kb(current)
        stack.extend(_children(current))
    return total


class PeakMemory:
    """Samples the process tree's anonymous RSS in a thread; .peak is the maximum in bytes."""

    def __init__(self, interval=0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_anon_kb(os.getpid()) * 1024)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_anon_kb(os.getpid()) * 1024)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def bare_builder_loop(paths, n):
    """What the builder does per patch, without datasets: read, check, convert, encode three PNGs."""
    images, masks = pim.open_fold(paths)
    total = 0
    for index in range(n):
        image, ids = pim.read_patch(images, masks, index, paths)
        semantic, instance, _ = pim.ids_to_labels(ids)
        total += len(pim.encode_png(image)) + len(pim.encode_png(semantic)) + len(pim.encode_png(instance))
    return total


class TimedBuilder(pim.PanNukeImageMask):
    """The builder, noting when the first example is asked for, so start-up can be left out."""

    first_example_at = None

    def _generate_examples(self, shards):
        if TimedBuilder.first_example_at is None:
            TimedBuilder.first_example_at = time.perf_counter()
        yield from super()._generate_examples(shards)


def run_builder(data_dir, cache_dir, num_proc):
    shutil.rmtree(cache_dir, ignore_errors=True)
    TimedBuilder.first_example_at = None
    with PeakMemory() as memory:
        start = time.perf_counter()
        builder = TimedBuilder(config_name="part1", data_dir=data_dir, cache_dir=cache_dir)
        builder.download_and_prepare(num_proc=num_proc)
        end = time.perf_counter()
    return {
        "seconds": end - start,
        "seconds_after_startup": end - (TimedBuilder.first_example_at or start),
        "peak_rss_anon": memory.peak,
        "output_bytes": dir_bytes(cache_dir),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--patches", type=int, default=pim.FOLD_SIZES[1], help="patches in the fake fold (default 2656)"
    )
    parser.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "out"), help="scratch folder")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

    n = args.patches
    data_dir = os.path.join(args.workdir, f"fold1-{n}")
    paths = fold_paths(data_dir, 1, "kaggle")
    if not os.path.exists(paths["types"]):
        start = time.perf_counter()
        write_fold(data_dir, 1, n, "kaggle")
        print(f"wrote fake fold of {n} patches in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    source_bytes = sum(os.path.getsize(p) for p in paths.values())

    results = {"patches": n, "source_bytes": source_bytes, "cpus": os.cpu_count(), "numpy": np.__version__}
    with PeakMemory() as memory:
        start = time.perf_counter()
        png_bytes = bare_builder_loop(paths, n)
        seconds = time.perf_counter() - start
    results["bare_loop"] = {"seconds": seconds, "peak_rss_anon": memory.peak, "output_bytes": png_bytes}
    for num_proc in (1, 2):
        results[f"builder_{num_proc}"] = run_builder(data_dir, os.path.join(args.workdir, "cache"), num_proc)

    bare = n / results["bare_loop"]["seconds"]
    one = n / results["builder_1"]["seconds_after_startup"]
    one_total = n / results["builder_1"]["seconds"]
    two_total = n / results["builder_2"]["seconds"]
    rows = [
        ("bare loop (read + convert + 3 PNGs)", bare, "1.00x", results["bare_loop"]),
        ("builder, num_proc=1 (start-up excluded)", one, f"{one / bare:.2f}x bare", results["builder_1"]),
        ("builder, num_proc=1 (whole prepare)", one_total, f"{one_total / bare:.2f}x bare", results["builder_1"]),
        (
            "builder, num_proc=2 (whole prepare)",
            two_total,
            f"{two_total / one_total:.2f}x num_proc=1",
            results["builder_2"],
        ),
    ]
    lines = [
        f"Fake fold of {n} patches ({source_bytes / 1e9:.1f} GB float64), {os.cpu_count()} CPUs, one run:",
        "",
        "| run | patches/s | ratio | peak anonymous RSS (tree) | output |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, rate, ratio, r in rows:
        lines.append(
            f"| {name} | {rate:.1f} | {ratio} | {r['peak_rss_anon'] / 2**20:.0f} MiB | {r['output_bytes'] / 1e6:.0f} MB |"
        )
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
