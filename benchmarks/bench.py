"""Speed and memory of the builder (and the export) against a bare loop, measured in one run.

    python benchmarks/bench.py                  # a fake Part 1: 2,656 patches, 12.5 GB of float64
    python benchmarks/bench.py --patches 300    # quicker

Writes a fake fold in the real format (kept for later runs), then times: a bare loop (memory-mapped
read + the builder's own conversions + PNG encoding, no `datasets`), the builder at num_proc 1 and 2,
and the folder export at 1 and 2 processes against a bare export loop, then every other --format at 1.
Memory is the peak anonymous RSS (RssAnon) summed over the process tree: mapped file pages are page
cache, not the tool's memory.
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
from convert.__main__ import main as cli_main
from convert.export import render_mask
from convert.sample import fold_paths, write_fold

FORMATS = ("coco", "yolo", "hovernet", "pannuke")  # timed against the imagemask export at --num-proc 1


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


def bare_export_loop(paths, n, out):
    """What an export does per patch, without datasets: read, convert, encode image + colour mask, write."""
    images, masks = pim.open_fold(paths)
    os.makedirs(out, exist_ok=True)
    for index in range(n):
        image, ids = pim.read_patch(images, masks, index, paths)
        semantic, instance, _ = pim.ids_to_labels(ids)
        with open(os.path.join(out, f"{index:05d}.png"), "wb") as f:
            f.write(pim.encode_png(image))
        with open(os.path.join(out, f"{index:05d}_mask.png"), "wb") as f:
            f.write(pim.encode_png(render_mask(semantic, instance, "color")))
    return dir_bytes(out)


def measure(function, *args):
    """{"seconds", "peak_rss_anon", "output_bytes"} of function(*args), which returns the bytes it wrote."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        written = function(*args)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_anon": memory.peak, "output_bytes": written}


def run_export(data_dir, cache_dir, out, num_proc, export_format="imagemask"):
    shutil.rmtree(out, ignore_errors=True)
    argv = ["export", "--out", out, "--data-dir", data_dir, "--cache-dir", cache_dir, "--num-proc", str(num_proc)]
    argv += ["--format", export_format]
    code = cli_main([*argv, "--quiet"])
    if code != 0:
        raise RuntimeError(f"export failed with exit code {code}")
    return dir_bytes(out)


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
    result = measure(_prepare, data_dir, cache_dir, num_proc)
    if TimedBuilder.first_example_at is not None:  # set in this process only when num_proc is 1
        result["seconds_after_startup"] = _prepare.end - TimedBuilder.first_example_at
    return result


def _prepare(data_dir, cache_dir, num_proc):
    builder = TimedBuilder(config_name="part1", data_dir=data_dir, cache_dir=cache_dir)
    builder.download_and_prepare(num_proc=num_proc)
    _prepare.end = time.perf_counter()
    return dir_bytes(cache_dir)


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
    cache_dir = os.path.join(args.workdir, "cache")
    out = os.path.join(args.workdir, "export")

    r = {"patches": n, "source_bytes": source_bytes, "cpus": os.cpu_count(), "numpy": np.__version__}
    for path in paths.values():  # every run reads the fold from page cache, none from disk
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    bare_builder_loop(paths, min(n, 32))  # warm-up: imports, allocator, first page faults
    r["bare_loop"] = measure(bare_builder_loop, paths, n)
    for num_proc in (1, 2):
        r[f"builder_{num_proc}"] = run_builder(data_dir, cache_dir, num_proc)
    # The export rows run with the builder cache warm, against a bare export loop. The timed builder
    # above is another class, with a cache of its own, so warm the real one first (not timed).
    pim.build("part1", data_dir=data_dir, cache_dir=cache_dir)
    r["bare_export"] = measure(bare_export_loop, paths, n, out)
    for num_proc in (1, 2):
        r[f"export_{num_proc}"] = measure(run_export, data_dir, cache_dir, out, num_proc)
    for export_format in FORMATS:
        r[f"export_{export_format}"] = measure(run_export, data_dir, cache_dir, out, 1, export_format)
    shutil.rmtree(out)

    def rate(key, seconds="seconds"):
        return n / r[key][seconds]

    rows = [
        ("bare loop: read + convert + 3 PNGs", "bare_loop", rate("bare_loop"), "1.00x"),
        (
            "builder, num_proc=1, start-up excluded",
            "builder_1",
            rate("builder_1", "seconds_after_startup"),
            f"{rate('builder_1', 'seconds_after_startup') / rate('bare_loop'):.2f}x bare loop",
        ),
        ("builder, num_proc=1, whole prepare", "builder_1", rate("builder_1"), "base for num_proc=2"),
        (
            "builder, num_proc=2, whole prepare",
            "builder_2",
            rate("builder_2"),
            f"{rate('builder_2') / rate('builder_1'):.2f}x num_proc=1",
        ),
        ("bare export loop: read + convert + 2 PNGs + write", "bare_export", rate("bare_export"), "base for export"),
        (
            "export --num-proc 1, cache warm",
            "export_1",
            rate("export_1"),
            f"{rate('export_1') / rate('bare_export'):.2f}x bare export",
        ),
        (
            "export --num-proc 2, cache warm",
            "export_2",
            rate("export_2"),
            f"{rate('export_2') / rate('export_1'):.2f}x --num-proc 1",
        ),
    ]
    rows += [
        (
            f"export --format {export_format} --num-proc 1, cache warm",
            f"export_{export_format}",
            rate(f"export_{export_format}"),
            f"{r[f'export_{export_format}']['seconds'] / r['export_1']['seconds']:.2f}x imagemask time",
        )
        for export_format in FORMATS
    ]
    lines = [
        f"Fake fold of {n} patches ({source_bytes / 1e9:.1f} GB float64), {os.cpu_count()} CPUs, one run:",
        "",
        "| run | patches/s | ratio | peak anonymous RSS (tree) | output |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, key, value, ratio in rows:
        lines.append(
            f"| {name} | {value:.1f} | {ratio} | {r[key]['peak_rss_anon'] / 2**20:.0f} MiB | "
            f"{r[key]['output_bytes'] / 1e6:.0f} MB |"
        )
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
