"""Publish PanNuke to the Hugging Face Hub as Parquet plus a dataset card, or write that repository to --local-dir.

Each config is built with the builder and pushed with DatasetDict.push_to_hub into its own folder
(part1/, all/, folds/); the card README.md lists every config, `part1` first and default. The loading
script is never uploaded: datasets >= 4 refuses repositories that hold one.
"""

import argparse
import collections
import json
import logging
import os
import shutil
import string
import sys
import tempfile
from importlib import resources

import datasets
import numpy as np
import yaml
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, get_token
from huggingface_hub.errors import EntryNotFoundError

import pannuke_imagemask as pim

from . import __version__
from .common import (
    CONFIGS,
    add_source_arguments,
    build_from_args,
    check_free_space,
    command_parser,
    disk_bytes,
    refuse_non_empty,
    run_cli,
    staging_dir,
)
from .export import write_samples

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "500MB"
ID2LABEL = "id2label.json"
PREVIEW = "preview.png"
CARD_FIELDS = {
    "license": "cc-by-nc-sa-4.0",
    "task_categories": ["image-segmentation"],
    "task_ids": ["instance-segmentation", "semantic-segmentation"],
    "tags": ["histopathology", "pathology", "nuclei", "medical", "biology", "H&E", "pannuke"],
    "pretty_name": "PanNuke (image, semantic mask, instance mask, nuclei)",
    "size_categories": ["1K<n<10K"],
}


def config_entry(config, dataset_dict):
    """The card's `configs` item for a config, with data files where push_to_hub puts them."""
    return {
        "config_name": config,
        "data_files": [{"split": split, "path": f"{config}/{split}-*"} for split in dataset_dict],
    }


def info_entry(config, dataset_dict):
    """The card's `dataset_info` item: features and split sizes."""
    first = next(iter(dataset_dict.values()))
    splits = datasets.SplitDict()
    for split, dataset in dataset_dict.items():
        splits.add(datasets.SplitInfo(name=split, num_bytes=dataset.data.nbytes, num_examples=dataset.num_rows))
    info = datasets.DatasetInfo(features=first.features, splits=splits)
    return {"config_name": config, **info._to_yaml_dict()}


def _by_name(entries):
    if isinstance(entries, dict):
        entries = [entries]
    return {entry.get("config_name", "default"): entry for entry in entries or []}


def card_metadata(built, existing=None):
    """YAML metadata: fixed fields, then configs and dataset_info merged with an existing card's."""
    existing = existing or {}
    configs = _by_name(existing.get("configs"))
    infos = _by_name(existing.get("dataset_info"))
    for config, dataset_dict in built.items():
        configs[config] = config_entry(config, dataset_dict)
        infos[config] = info_entry(config, dataset_dict)
    order = [c for c in CONFIGS if c in configs] + sorted(set(configs) - set(CONFIGS))
    default = order[0]
    config_list = []
    for name in order:
        entry = {key: value for key, value in configs[name].items() if key != "default"}
        if name == default:
            entry["default"] = True
        config_list.append(entry)
    return {**CARD_FIELDS, "configs": config_list, "dataset_info": [infos[name] for name in order if name in infos]}


def id2label():
    """transformers' id2label: the semantic_mask values and their names."""
    return {"0": "background", **{str(k + 1): name for k, name in enumerate(pim.NUCLEUS_CLASSES)}}


def split_statistics(dataset):
    """(nuclei per class, patches per tissue, patches without nuclei) of one split, counted from its rows."""
    nuclei = [0] * len(pim.NUCLEUS_CLASSES)
    empty = 0
    for batch in dataset.select_columns(["nuclei"]).with_format("arrow").iter(batch_size=1000):
        column = batch["nuclei"].combine_chunks()
        empty += int((column.value_lengths().to_numpy(zero_copy_only=False) == 0).sum())
        labels = column.flatten().field("label").to_numpy(zero_copy_only=False)
        for label, count in zip(*np.unique(labels, return_counts=True)):
            nuclei[int(label)] += int(count)
    tissues = collections.Counter(pim.TISSUES[t] for t in dataset["tissue"])
    return nuclei, tissues, empty


def statistics_tables(built):
    """Markdown tables, per config being pushed: nuclei per class, patches per tissue, patches without nuclei."""
    sections = []
    for config, dataset_dict in built.items():
        splits = list(dataset_dict)
        stats = {split: split_statistics(ds) for split, ds in dataset_dict.items()}
        head = "| | " + " | ".join(f"`{s}`" for s in splits) + " |\n| --- |" + " ---: |" * len(splits)
        classes = [
            f"| {name} | " + " | ".join(f"{stats[s][0][k]:,}" for s in splits) + " |"
            for k, name in enumerate(pim.NUCLEUS_CLASSES)
        ]
        classes.append("| **all nuclei** | " + " | ".join(f"{sum(stats[s][0]):,}" for s in splits) + " |")
        empty = (
            "| patches without nuclei | "
            + " | ".join(
                f"{stats[s][2]:,} of {dataset_dict[s].num_rows:,} ({100 * stats[s][2] / dataset_dict[s].num_rows:.1f}%)"
                for s in splits
            )
            + " |"
        )
        tissues = [
            f"| {tissue} | " + " | ".join(f"{stats[s][1].get(tissue, 0):,}" for s in splits) + " |"
            for tissue in pim.TISSUES
        ]
        sections.append(
            f"Config `{config}`, nuclei per class (after the overlap rule) and patches without nuclei:\n\n"
            + "\n".join([head, *classes, empty])
            + f"\n\nConfig `{config}`, patches per tissue:\n\n"
            + "\n".join([head, *tissues])
        )
    return "\n\n".join(sections)


def write_extras(folder, built):
    """id2label.json and the preview picture (the export's samples montage) at the repository root."""
    with open(os.path.join(folder, ID2LABEL), "w") as f:
        json.dump(id2label(), f, indent=2)
        f.write("\n")
    first = next(iter(built.values()))
    write_samples(folder, first)
    os.replace(os.path.join(folder, "samples.png"), os.path.join(folder, PREVIEW))


def _split_tables(metadata):
    lines = []
    for info in metadata["dataset_info"]:
        splits = info.get("splits", [])
        sizes = ", ".join(f"{s['name']} {s['num_examples']}" for s in splits)
        lines.append(f"| `{info['config_name']}` | {sizes} |")
    return "| config | splits (patches) |\n| --- | --- |\n" + "\n".join(lines)


SAMPLE_NOTICE = (
    "> **This repository holds the built-in FAKE sample of pannuke-imagemask: synthetic patches in the PanNuke "
    "format, not PanNuke data.** Use it to try the format, never to train or evaluate.\n\n"
)


# A --local-dir written without --repo-id: the card's code names a placeholder and says to replace it.
REPO_ID_PLACEHOLDER = "OWNER/NAME"
REPO_ID_NOTE = (
    f"`{REPO_ID_PLACEHOLDER}` in the code of this card stands for the repository's id: replace it with your "
    "repository's id (for example `your-name/pannuke-imagemask`) when you upload this folder to the Hub."
)


def render_card(repo_id, metadata, split_seed, split_ratios, sample=False, built=None):
    """The dataset card: YAML metadata, then the body from card_template.md (and a notice for the fake sample).

    Without a repo_id the code names REPO_ID_PLACEHOLDER and the card says to replace it.
    """
    template = string.Template(resources.files(__package__).joinpath("card_template.md").read_text())
    names = [entry["config_name"] for entry in metadata["configs"]]
    body = template.substitute(
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        repo_id_note="" if repo_id else f"{REPO_ID_NOTE}\n\n",
        tool_version=__version__,
        config_list=", ".join(f"`{name}`" for name in names),
        default_config=names[0],
        tissue_list=", ".join(pim.TISSUES),
        split_tables=_split_tables(metadata),
        statistics=statistics_tables(built or {}) or "(not counted in this push)",
        id2label=ID2LABEL,
        preview=PREVIEW,
        split_seed=split_seed,
        split_ratios=", ".join(str(r) for r in split_ratios),
        homepage=pim._HOMEPAGE,
        citation=pim._CITATION,
    )
    if sample:
        metadata = {**metadata, "size_categories": ["n<1K"], "tags": [*metadata["tags"], "synthetic"]}
        title, rest = body.split("\n", 1)
        body = f"{title}\n\n{SAMPLE_NOTICE}{rest.lstrip()}"
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{body}"


def card_for(args, built, existing):
    """The card of a push: this run's configs merged into an existing card's metadata."""
    return render_card(
        args.repo_id,
        card_metadata(built, existing),
        args.split_seed,
        args.split_ratios,
        sample=args.sample,
        built=built,
    )


def write_local_shards(dataset_dict, config, folder, max_shard_size):
    """Parquet shards named and cut as push_to_hub names and cuts them (nothing to embed: images are bytes)."""
    max_bytes = datasets.utils.py_utils.convert_file_size_to_int(max_shard_size)
    target = os.path.join(folder, config)
    os.makedirs(target, exist_ok=True)
    for split, dataset in dataset_dict.items():
        num_shards = int(dataset.data.nbytes / max_bytes) + 1
        for index in range(num_shards):
            shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
            shard.to_parquet(os.path.join(target, f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))


def _read_card_yaml(path):
    with open(path) as f:
        return DatasetCard(f.read()).data.to_dict()


def push_local(args, configs):
    local_dir = os.path.abspath(args.local_dir)
    refuse_non_empty(local_dir, args.force, "update")
    built = {config: build_from_args(_with_config(args, config))[0] for config in configs}
    # Parquet of already-compressed PNG bytes takes about what the Arrow tables take.
    check_free_space(local_dir, disk_bytes(ds.data.nbytes for dd in built.values() for ds in dd.values()))
    with staging_dir(local_dir) as tmp:
        for config, dataset_dict in built.items():
            write_local_shards(dataset_dict, config, tmp, args.max_shard_size)
        card_path = os.path.join(local_dir, "README.md")
        existing = _read_card_yaml(card_path) if os.path.exists(card_path) else None
        card = card_for(args, built, existing)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
        write_extras(tmp, built)
        os.makedirs(local_dir, exist_ok=True)
        for name in sorted(os.listdir(tmp)):  # config folders and the card replace theirs; others stay
            destination = os.path.join(local_dir, name)
            if os.path.isdir(destination):
                shutil.rmtree(destination)
            os.replace(os.path.join(tmp, name), destination)
    logger.info("wrote %s (%s) to %s", args.repo_id or REPO_ID_PLACEHOLDER, ", ".join(configs), local_dir)
    return 0


def push_hub(args, configs, token):
    api = HfApi(token=token)
    built = {}
    for config in configs:
        dataset_dict, _ = build_from_args(_with_config(args, config))
        dataset_dict.push_to_hub(
            args.repo_id,
            config_name=config,
            set_default=config == "part1",
            max_shard_size=args.max_shard_size,
            private=args.private,
            token=token,
            commit_message=f"Upload config {config} (pannuke-imagemask {__version__})",
        )
        built[config] = dataset_dict
    try:
        card_file = api.hf_hub_download(args.repo_id, "README.md", repo_type="dataset")
        existing = _read_card_yaml(card_file)
    except EntryNotFoundError:
        existing = None
    card = card_for(args, built, existing)
    with tempfile.TemporaryDirectory() as extras:
        write_extras(extras, built)
        operations = [CommitOperationAdd("README.md", card.encode())] + [
            CommitOperationAdd(name, os.path.join(extras, name)) for name in (ID2LABEL, PREVIEW)
        ]
        api.create_commit(
            repo_id=args.repo_id,
            repo_type="dataset",
            operations=operations,
            commit_message=f"Dataset card, {ID2LABEL} and {PREVIEW} (pannuke-imagemask {__version__})",
        )
    logger.info("pushed %s (%s)", args.repo_id, ", ".join(configs))
    return 0


def _with_config(args, config):
    return argparse.Namespace(**{**vars(args), "config": config})


def _get_parser():
    parser = command_parser("push", __doc__)
    parser.add_argument(
        "--repo-id",
        help=f"OWNER/NAME of the dataset repository; required to push, optional with --local-dir (the card then "
        f"says {REPO_ID_PLACEHOLDER} and how to replace it)",
    )
    add_source_arguments(parser, several_configs=True)
    parser.add_argument("--all-configs", action="store_true", help="push part1, all and folds")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest Parquet shard")
    parser.add_argument("--local-dir", help="write the repository folder here instead of pushing (no network)")
    parser.add_argument("--force", action="store_true", help="update a non-empty --local-dir")
    return parser


def push(args):
    if args.all_configs and args.config:
        raise ValueError("--config and --all-configs exclude each other")
    configs = CONFIGS if args.all_configs else list(dict.fromkeys(args.config or ["part1"]))
    if args.repo_id is not None and "/" not in args.repo_id:
        raise ValueError(f"--repo-id must be OWNER/NAME, got {args.repo_id!r}")
    datasets.utils.py_utils.convert_file_size_to_int(args.max_shard_size)  # a bad size fails before any work
    if args.local_dir:
        return push_local(args, configs)
    token = get_token()
    if not token:
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --local-dir")
    return push_hub(args, configs, token)


def main(argv=None):
    parser = _get_parser()
    args = parser.parse_args(argv)
    if not args.repo_id and not args.local_dir:
        parser.error("--repo-id is required to push to the Hub (or pass --local-dir to write the repository folder)")
    return run_cli("push", push, args)


if __name__ == "__main__":
    sys.exit(main())
