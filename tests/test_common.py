"""What the commands share: help texts that show each default once, the built-in sample's identity."""

import hashlib
import re

import numpy as np
import pytest

from convert.__main__ import COMMANDS, main
from convert.sample import SAMPLE_PATCHES, SAMPLE_VERSION, fake_patch, fake_tissues

DATASETS_CACHE = "the Hugging Face datasets cache"
SOURCE_DEFAULTS = {
    "--config": "part1",
    "--split-seed": "0",
    "--split-ratios": "0.8 0.15 0.05",
    "--num-proc": "1",
    "--cache-dir": DATASETS_CACHE,
}


def _option_helps(command, capsys, monkeypatch):
    """{option: its help text on one line} from `command --help`."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    options = capsys.readouterr().out.split("\noptions:\n", 1)[1]
    blocks = re.split(r"\n  (?=-)", "\n" + options)[1:]
    return {block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks}


def test_every_command_shows_each_meaningful_default_once(capsys, monkeypatch):
    shown = {}
    for command in COMMANDS:
        for option, text in _option_helps(command, capsys, monkeypatch).items():
            defaults = re.findall(r"\(default: ([^)]*)\)", text)
            assert len(defaults) <= 1 and text.count("default") <= 1, f"{command} {option}: {text}"
            if defaults:
                shown[command, option] = defaults[0]
    expected = {
        **{("export", option): value for option, value in SOURCE_DEFAULTS.items()},
        ("export", "--format"): "imagemask",
        ("export", "--mask-style"): "color",
        ("export", "--image-format"): "png",
        ("export", "--size"): "256",
        ("verify", "--data-dir"): "as recorded in export.json",
        ("verify", "--cache-dir"): DATASETS_CACHE,
        ("verify", "--num-proc"): "1",
        **{("push", option): value for option, value in SOURCE_DEFAULTS.items()},
        ("push", "--max-shard-size"): "500MB",
        ("infos", "--out"): "dataset_infos.json of the checkout; an installed copy needs --out",
        **{("evaluate", option): value for option, value in SOURCE_DEFAULTS.items()},
        ("evaluate", "--config"): "part1; folds with --protocol",
        ("evaluate", "--pred-format"): "recognised from what it holds",
        ("evaluate", "--f1-radius"): "12.0",
        ("evaluate", "--min-score"): "0.5",
        ("evaluate", "--max-overlap"): "0.5",
        ("evaluate", "--metrics"): "pannuke, hovernet",
        ("evaluate", "--bootstrap"): "0, none; 1000 with --compare",
        ("evaluate", "--seed"): "0",
    }
    assert shown == expected


def test_every_command_has_version_and_quiet_and_says_what_its_processes_do(capsys, monkeypatch):
    from convert import __version__

    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--version"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == f"pannuke-imagemask {__version__}\n"
        helps = _option_helps(command, capsys, monkeypatch)
        assert helps["--quiet"] == "--quiet log warnings and errors only, no progress bars", command
    work = {"export": "building and writing", "push": "building and writing", "evaluate": "scoring"}
    for command, what in work.items():
        assert _option_helps(command, capsys, monkeypatch)["--num-proc"].startswith(
            f"--num-proc NUM_PROC processes for {what}"
        )
    assert _option_helps("evaluate", capsys, monkeypatch)["--data-dir"].endswith("this or --sample")
    assert _option_helps("export", capsys, monkeypatch)["--data-dir"].endswith("the official zips are downloaded")


def _on_a_terminal(args, cwd):
    """stderr of `python -m convert ARGS` written to a pseudo-terminal, where tqdm draws its bars."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    main_fd, child_fd = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing: give it a size.
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "convert", *args], cwd=cwd, stderr=child_fd, stdout=child_fd)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert process.wait() == 0
    return b"".join(chunks).decode(errors="replace")


def test_quiet_means_no_progress_bar_even_on_a_terminal(kaggle_part1, cache, tmp_path):
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = ["--data-dir", kaggle_part1, "--cache-dir", cache]
    loud = _on_a_terminal(["export", "--out", str(tmp_path / "a"), *source], repo)
    assert "Exporting" in loud
    quiet = _on_a_terminal(["export", "--out", str(tmp_path / "b"), *source, "--quiet"], repo)
    quiet += _on_a_terminal(["verify", str(tmp_path / "b"), "--cache-dir", cache, "--quiet"], repo)
    assert "Exporting" not in quiet and "Verifying" not in quiet and "%|" not in quiet, quiet


# Digest of the first patches of fold 1 and of its tissue list. When it changes, the sample's files change:
# bump SAMPLE_VERSION (so that caches holding the old sample are not reused), then update both here.
SAMPLE_DIGEST = (2, "bcd1cbd77213474acdb06c8ca2576da28ee1e8cff9ff33650d079a1fd78fbb6c")


def test_a_changed_sample_has_a_new_version():
    digest = hashlib.sha256(repr(fake_tissues(SAMPLE_PATCHES, 1)).encode())
    for index in range(3):
        for array in fake_patch(1, index):
            digest.update(np.ascontiguousarray(array).tobytes())
    assert (SAMPLE_VERSION, digest.hexdigest()) == SAMPLE_DIGEST


def test_the_program_imports_its_command_frozen_and_main_alone_leaves_the_collector(tmp_path):
    import subprocess
    import sys

    # What run() hands to main(): the command already imported, its objects frozen, the collector on.
    env = _repo_env()
    script = (
        "import gc, sys\n"
        "import convert.__main__ as entry\n"
        "def main(argv):\n"
        "    print(sorted(argv), 'convert.infos' in sys.modules, gc.isenabled(), gc.get_freeze_count() > 10000)\n"
        "    return 3\n"
        "entry.main = main\n"
        "sys.argv = ['pannuke-imagemask', 'infos', '--help']\n"
        "entry.run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "['--help', 'infos'] True True True\n", "")
    # An unknown command is main()'s to refuse: run() imports nothing and freezes nothing for it.
    script = script.replace("'infos', '--help'", "'nosuch'").replace("'convert.infos'", "'convert.nosuch'")
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert (done.returncode, done.stdout) == (3, "['nosuch'] False True False\n")
    # In-process callers of main() keep the collector exactly as it was.
    import gc

    before = gc.get_freeze_count()
    with pytest.raises(SystemExit):
        main(["infos", "--help"])
    assert gc.isenabled() and gc.get_freeze_count() == before


def _repo_env():
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
