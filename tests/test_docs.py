"""README.md and docs/*.md: every Python block runs, every README command runs, every relative link resolves."""

import os
import re
import shlex

import pytest
from blocks import ROOT, doc_files, export_named_trees, needs_consumer_tier, python_blocks, run_blocks

from convert.__main__ import main

# Blocks that import a training framework, per file: counted here, run by the consumer tier. A new one must be
# added here (and to consumer_tests/), so that none is skipped silently.
# docs/formats.md: the torchvision recipe (consumer_tests/test_torchvision.py); docs/evaluate.md: the Ultralytics
# and Mask R-CNN prediction recipes (consumer_tests/test_predictions.py).
CONSUMER_BLOCKS = {"docs/formats.md": 1, "docs/evaluate.md": 2}


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_the_docs_are_readme_and_docs_folder():
    files = doc_files()
    assert files[0] == "README.md"
    assert {"docs/dataset.md", "docs/formats.md", "docs/evaluate.md", "docs/reliability.md"} <= set(files)
    assert files[1:] == sorted(files[1:])


@pytest.mark.parametrize("name", doc_files())
def test_every_lean_python_block_runs(name, local_repo, kaggle_part1, three_folds, tmp_path):
    blocks = python_blocks(_read(name))
    consumer = [b for b in blocks if needs_consumer_tier(b)]
    assert len(consumer) == CONSUMER_BLOCKS.get(name, 0), (
        f"{name}: consumer-tier blocks changed; update CONSUMER_BLOCKS"
    )
    lean = [b for b in blocks if not needs_consumer_tier(b)]
    export_named_trees(lean, kaggle_part1, str(tmp_path / "cache"), str(tmp_path))  # e.g. pannuke-coco
    run_blocks(lean, {"OWNER/NAME": str(local_repo), "~/data/pannuke": three_folds}, tmp_path)


def test_the_readme_shows_loading_building_and_the_imagefolder_line():
    blocks = python_blocks(_read("README.md"))
    assert len(blocks) == 3
    assert 'load_dataset("OWNER/NAME", "part1")' in blocks[0] and "build(" in blocks[1]
    assert 'load_dataset("imagefolder", data_dir="pannuke-imagemask")' in blocks[2]


def test_docs_formats_shows_the_imagefolder_line():
    text = _read("docs/formats.md")
    block = python_blocks(text[text.index("## `imagemask`") : text.index("## `coco`")])[0]
    assert 'ds = load_dataset("imagefolder", data_dir="pannuke-imagemask")' in block


def test_needs_consumer_tier_reads_imports_only():
    assert needs_consumer_tier("import numpy as np\nimport torch\n")
    assert needs_consumer_tier("    from transformers import AutoModel\n")
    assert needs_consumer_tier("from torch.utils.data import DataLoader\n")
    assert not needs_consumer_tier('ds = ds.with_format("torch")  # import torch later\n')
    assert not needs_consumer_tier("import torchmetrics_free_name\nimport numpy\n")


def _console_commands(text):
    """The `python -m convert ...` lines of the indented command blocks, continuation lines joined."""
    commands, joined = [], ""
    for line in text.splitlines():
        if not line.startswith("    "):
            continue
        line = line[4:]
        if joined:
            joined += " " + line.strip()
        elif line.startswith("python -m convert "):
            joined = line
        else:
            continue
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip()
            continue
        commands.append(joined)
        joined = ""
    return commands


def test_every_command_of_the_readme_runs(three_folds, tmp_path, monkeypatch):
    """A newcomer's path: each command of README.md in order, offline; only the real upload is left out."""
    commands = _console_commands(_read("README.md"))
    assert [shlex.split(c)[3] for c in commands] == ["export", "export", "verify", "push", "push", "export", "evaluate"]
    monkeypatch.chdir(tmp_path)
    uploads = 0
    for command in commands:
        argv = shlex.split(command.replace("~/data/pannuke", three_folds), comments=True)[3:]
        if argv[0] == "push" and "--local-dir" not in argv:
            uploads += 1  # the real Hub: tests/test_push.py covers the upload against a fake Hub
            continue
        assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0, command
    assert uploads == 1
    assert (tmp_path / "test.json").is_file() and (tmp_path / "hub-repo" / "README.md").is_file()
    assert (tmp_path / "report" / "index.html").is_file()  # evaluate --report


# Links: [text](path), [text](path#anchor), [text](#anchor); images ![alt](path) too.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def github_slug(heading):
    """GitHub's anchor for a heading: links reduced to their text, lowercase, punctuation but - and _ dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_slugs(text):
    """Every anchor of a Markdown text (headings outside code blocks), repeats numbered -1, -2 as GitHub does."""
    slugs, seen = set(), {}
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", _FENCE.sub("", text), re.MULTILINE):
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def test_github_slug():
    assert github_slug("Export your framework's format") == "export-your-frameworks-format"
    assert github_slug("Evaluate: mPQ and bPQ") == "evaluate-mpq-and-bpq"
    assert github_slug("`data_dir`, the split (exactly)") == "data_dir-the-split-exactly"
    assert heading_slugs("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def _links(text):
    return _LINK.findall(_CODE_SPAN.sub("", _FENCE.sub("", text)))


@pytest.mark.parametrize("name", doc_files())
def test_every_relative_link_resolves(name):
    text = _read(name)
    links = [link for link in _links(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
        if not os.path.exists(os.path.join(ROOT, target)):
            broken.append(f"{link}: no file {target}")
        elif anchor and (not target.endswith(".md") or anchor not in heading_slugs(_read(target))):
            broken.append(f"{link}: no heading #{anchor} in {target}")
    assert not broken, f"{name}: " + "; ".join(broken)


def test_the_link_check_sees_links():
    assert _links("[a](docs/x.md#y) `[b](c)` ![i](p.png)\n```\n[d](e)\n```\n") == ["docs/x.md#y", "p.png"]
    assert len(_links(_read("README.md"))) >= 8
