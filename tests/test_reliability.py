"""Never a stale cache, a download failure that says why, a build killed mid-way that recovers."""

import functools
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from pannuke_fixtures import PART1_PATCHES, raw_fold
from reference import reference_labels, reference_split

import pannuke_imagemask as pim
from convert import sample as sample_module
from convert.__main__ import main
from convert.common import sample_dir
from convert.sample import SAMPLE_FOLDER, SAMPLE_VERSION, fake_tissues, fold_paths, write_fold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS_FORWARD = (
    "use a mirror (PANNUKE_BASE_URL or the config's base_url), or download the zips by hand, unpack them and "
    "pass their folder as --data-dir (data_dir=)"
)


def _sizes(dataset_dict):
    return {split: ds.num_rows for split, ds in dataset_dict.items()}


@pytest.fixture
def counted_generation(monkeypatch):
    """How many patches the builder generated (in this process), to tell a prepare from a cache hit."""
    generated = []
    original = pim.PanNukeImageMask._generate_examples

    def counting(self, shards):
        for key, example in original(self, shards):
            generated.append(key)
            yield key, example

    monkeypatch.setattr(pim.PanNukeImageMask, "_generate_examples", counting)
    return generated


def test_a_fold_replaced_under_the_same_path_is_prepared_again(tmp_path, counted_generation):
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    write_fold(str(data), 1, PART1_PATCHES, "kaggle")
    first = pim.build("part1", data_dir=str(data), cache_dir=cache)
    assert _sizes(first) == {"train": 19, "validation": 4, "test": 1}
    assert len(counted_generation) == PART1_PATCHES

    counted_generation.clear()
    again = pim.build("part1", data_dir=str(data), cache_dir=cache)  # nothing touched: the cache
    assert counted_generation == []
    assert again["train"].cache_files == first["train"].cache_files

    write_fold(str(data), 1, 30, "kaggle")  # other content, another patch count, the same paths
    replaced = pim.build("part1", data_dir=str(data), cache_dir=cache)
    assert len(counted_generation) == 30
    expected = reference_split({1: fake_tissues(30, 1)}, 0, (0.8, 0.15, 0.05))
    assert {s: set(zip(ds["fold"], ds["index"])) for s, ds in replaced.items()} == expected
    _, masks, _ = raw_fold(str(data))
    row = replaced["train"][len(replaced["train"]) - 1]
    assert row["nuclei"] == reference_labels(masks[row["index"]])[2]


def test_a_touched_file_is_prepared_again_and_the_export_follows(tmp_path, counted_generation):
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    paths = write_fold(str(data), 1, PART1_PATCHES, "kaggle")
    assert main(["export", "--data-dir", str(data), "--out", str(tmp_path / "a"), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == PART1_PATCHES
    status = os.stat(paths["types"])
    os.utime(paths["types"], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    counted_generation.clear()
    assert main(["export", "--data-dir", str(data), "--out", str(tmp_path / "b"), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == PART1_PATCHES


def test_the_sample_reuses_its_cache(tmp_path, counted_generation):
    cache = str(tmp_path / "cache")
    for out in ("a", "b"):
        assert main(["export", "--sample", "--out", str(tmp_path / out), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == 36


FOLD_FILE_BYTES = {  # 36 patches of float64, plus the 128-byte .npy header
    "Images/images.npy": 128 + 36 * 256 * 256 * 3 * 8,  # 56,623,232
    "Masks/masks.npy": 128 + 36 * 256 * 256 * 6 * 8,  # 113,246,336
    "Images/types.npy": 128 + 36 * 13 * 4,  # 2,000
}


def _sample_files(cache):
    """{path relative to the cache: size} of every .npy file under the cache."""
    return {
        os.path.relpath(os.path.join(d, f), cache).replace(os.sep, "/"): os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(cache)
        for f in files
        if f.endswith(".npy")
    }


def _expected_sample(folds):
    return {
        f"{SAMPLE_FOLDER}/v{SAMPLE_VERSION}/Part {fold}/{name}": size
        for fold in folds
        for name, size in FOLD_FILE_BYTES.items()
    }


def test_the_sample_is_on_disk_once_for_every_config(tmp_path, counted_generation):
    cache = str(tmp_path / "cache")
    for config, out in (("part1", "a"), ("folds", "b")):
        argv = ["export", "--sample", "--config", config, "--out", str(tmp_path / out), "--cache-dir", cache]
        assert main([*argv, "--quiet"]) == 0
    files = _sample_files(cache)
    assert [path for path in files if path.endswith("Part 1/Images/images.npy")] == [
        f"{SAMPLE_FOLDER}/v{SAMPLE_VERSION}/Part 1/Images/images.npy"
    ]
    assert files == _expected_sample((1, 2, 3))
    assert sum(files.values()) == 509_614_704
    # Folds 2 and 3 written beside fold 1 leave part1's files, hence its cache, untouched.
    assert len(counted_generation) == 36 + 3 * 36
    assert main(["export", "--sample", "--out", str(tmp_path / "c"), "--cache-dir", cache, "--quiet"]) == 0
    assert len(counted_generation) == 36 + 3 * 36


def test_two_processes_creating_the_sample_at_once_write_it_once(tmp_path):
    cache = str(tmp_path / "cache")
    script = f"from convert.common import sample_dir; print(sample_dir((1, 2), {cache!r}))"
    env = dict(os.environ, PYTHONPATH=ROOT)
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    roots = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert roots == [os.path.join(cache, SAMPLE_FOLDER, f"v{SAMPLE_VERSION}")] * 2
    assert _sample_files(cache) == _expected_sample((1, 2))
    assert not [name for name in os.listdir(roots[0]) if name.endswith(".incomplete")]


def _fold_digest(root, fold=1):
    digest = hashlib.sha256()
    for path in sorted(fold_paths(root, fold, "kaggle").values()):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def test_a_sample_interrupted_while_written_leaves_no_fold(tmp_path, monkeypatch):
    original = sample_module.fake_patch

    def interrupted(fold, index):
        if index == 5:
            raise KeyboardInterrupt
        return original(fold, index)

    monkeypatch.setattr(sample_module, "fake_patch", interrupted)
    cache = str(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        sample_dir((1,), cache)
    root = os.path.join(cache, SAMPLE_FOLDER, f"v{SAMPLE_VERSION}")
    assert [name for name in os.listdir(root) if not name.endswith(".lock")] == []  # no fold, no staging folder


def test_a_sample_killed_while_written_is_written_whole_by_the_next_run(tmp_path):
    cache = str(tmp_path / "cache")
    root = os.path.join(cache, SAMPLE_FOLDER, f"v{SAMPLE_VERSION}")
    script = (
        "import time; import convert.sample as s; original = s.fake_patch; "
        "s.fake_patch = lambda fold, index: (time.sleep(0.2), original(fold, index))[1]; "
        f"from convert.common import sample_dir; sample_dir((1,), {cache!r})"
    )
    process = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [f for f in _sample_files(cache) if "incomplete" in f]:
        time.sleep(0.02)
    time.sleep(0.5)  # a few patches into the fold
    assert process.poll() is None, "the sample was written before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not os.path.exists(os.path.join(root, "Part 1"))
    assert sample_dir((1,), cache) == root
    assert _sample_files(cache) == _expected_sample((1,))  # the killed writer's staging folder is gone
    write_fold(str(tmp_path / "fresh"), 1, 36, "kaggle")
    assert _fold_digest(root) == _fold_digest(str(tmp_path / "fresh"))


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trusted_files(cache):
    """Files a later run could take for a finished download or dataset (locks are not)."""
    return sorted(
        os.path.relpath(os.path.join(d, f), cache)
        for d, _, files in os.walk(cache)
        for f in files
        if not f.endswith(".lock")
    )


@pytest.fixture
def empty_server(tmp_path):
    """A real HTTP server on 127.0.0.1 that has no file at all: every download is a 404."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_404_names_the_url_the_cause_and_the_ways_forward(empty_server, tmp_path, capsys, monkeypatch):
    url = empty_server + "/mirror"
    monkeypatch.setenv("PANNUKE_BASE_URL", url)
    cache = tmp_path / "cache"
    assert main(["export", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"pannuke-imagemask export: error: {url}/fold_1.zip: download failed: HTTP 404 File not found; {WAYS_FORWARD}\n"
    )
    assert _trusted_files(cache) == []
    assert not (tmp_path / "out").exists()


def test_a_closed_port_names_the_url_the_cause_and_the_ways_forward(tmp_path, capsys, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("PANNUKE_BASE_URL", url)
    cache = tmp_path / "cache"
    assert main(["export", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"pannuke-imagemask export: error: {url}/fold_1.zip: download failed: connection refused; {WAYS_FORWARD}\n"
    )
    assert _trusted_files(cache) == []


@pytest.mark.parametrize(
    "cause, said",
    [
        (socket.gaierror(-2, "Name or service not known"), "host not found (Name or service not known)"),
        (TimeoutError("read timed out"), "timed out"),
        (ConnectionResetError(104, "Connection reset by peer"), "[Errno 104] Connection reset by peer"),
    ],
)
def test_other_download_failures_are_named(cause, said):
    url = "https://mirror.example/fold_1.zip"
    try:
        try:
            raise cause
        except OSError as exc:
            raise FileNotFoundError(url) from exc
    except FileNotFoundError as exc:
        error = pim.download_failure(url, exc)
    assert isinstance(error, ConnectionError)
    assert str(error) == f"{url}: download failed: {said}; {WAYS_FORWARD}"


def test_a_build_killed_mid_way_then_run_again_is_complete(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_fold(str(data), 1, 400, "kaggle")
    script = f"import pannuke_imagemask as pim; pim.build('part1', data_dir={str(data)!r}, cache_dir={str(cache)!r})"
    env = dict(os.environ, PYTHONPATH=ROOT, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        written = [f for d, _, files in os.walk(cache) for f in files if f.endswith(".arrow") or "incomplete" in d]
        if written:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the build ended before it could be killed"
    time.sleep(0.5)  # well inside the 400-patch train split
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    rebuilt = pim.build("part1", data_dir=str(data), cache_dir=str(cache))
    expected = reference_split({1: fake_tissues(400, 1)}, 0, (0.8, 0.15, 0.05))
    assert {s: set(zip(ds["fold"], ds["index"])) for s, ds in rebuilt.items()} == expected
    _, masks, _ = raw_fold(str(data))
    for split in rebuilt.values():
        last = split[len(split) - 1]
        assert last["nuclei"] == reference_labels(masks[last["index"]])[2]
