"""The matplotlib pictures: an export's statistics.png and samples.png, the Hub repository's preview.png."""

import os

import numpy as np

import pannuke_imagemask as pim

COLORS = pim.CLASS_COLORS  # RGB as it appears on screen, index = semantic class


def _pyplot():
    import matplotlib  # imported when a picture is drawn: the other commands never pay for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_statistics(root, records):
    """statistics.png: patches per tissue and split, nuclei per class and split.

    records: the export's summary rows, [split folder, id, fold, index, tissue, nuclei per class..., nuclei].
    """
    plt = _pyplot()
    splits = list(dict.fromkeys(r[0] for r in records))
    tissues = sorted({r[4] for r in records})
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, max(5, 0.35 * len(tissues) + 2)))
    offset = np.zeros(len(tissues))
    for split in splits:
        counts = np.array([sum(1 for r in records if r[0] == split and r[4] == t) for t in tissues])
        left.barh(tissues, counts, left=offset, label=f"{split} ({counts.sum()})")
        offset += counts
    for y, value in enumerate(offset):
        left.text(value, y, f" {int(value)}", va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("patches")
    left.set_title("Patches per tissue and split")
    left.legend(loc="lower right")

    width = 0.8 / max(1, len(splits))
    x = np.arange(len(pim.NUCLEUS_CLASSES))
    for k, split in enumerate(splits):
        counts = [sum(int(r[5 + c]) for r in records if r[0] == split) for c in range(len(pim.NUCLEUS_CLASSES))]
        bars = right.bar(x + (k - (len(splits) - 1) / 2) * width, counts, width, label=split)
        right.bar_label(bars, fontsize=7)
    right.set_xticks(x, pim.NUCLEUS_CLASSES)
    right.set_ylabel("nuclei")
    right.set_title("Nuclei per class and split")
    right.legend()
    figure.suptitle(f"PanNuke export: {len(records)} patches")
    figure.tight_layout()
    figure.savefig(os.path.join(root, "statistics.png"), dpi=100)
    plt.close(figure)


def write_samples(root, dataset_dict, count=4, file_name="samples.png"):
    """A few patches of the first split (train or fold1) with their colour masks and an overlay."""
    plt = _pyplot()
    split = next(iter(dataset_dict))
    dataset = dataset_dict[split]
    rows = sorted({int(i) for i in np.linspace(0, dataset.num_rows - 1, min(count, dataset.num_rows))})
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for line, position in zip(axes, rows):
        example = dataset[position]
        image = np.array(example["image"])
        colour = COLORS[np.array(example["semantic_mask"])]
        nuclei = colour.any(axis=-1, keepdims=True)
        overlay = np.where(nuclei, (0.55 * image + 0.45 * colour).astype(np.uint8), image)
        for axis, picture, title in zip(line, (image, colour, overlay), ("image", "colour mask", "overlay")):
            axis.imshow(picture)
            axis.set_title(f"{example['id']} {title}", fontsize=9)
            axis.axis("off")
    legend = ", ".join(f"{name} {tuple(COLORS[k + 1].tolist())}" for k, name in enumerate(pim.NUCLEUS_CLASSES))
    figure.suptitle(f"{split} samples; {legend}", fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(root, file_name), dpi=80)
    plt.close(figure)
