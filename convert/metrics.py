"""Every number evaluate reports, as one per-patch state and its reductions (after pycocotools' and torchmetrics' shape).

Phases: `patch_state` turns one scored patch into a row of floats (the columns of each selected family side
by side); `tissue_sums` sums the rows per tissue, each patch weighted (all weights 1: the split itself;
bootstrap multiplicities: a replicate; a 0/1 mask: one side of a permutation); `reduce` turns the sums into
each family's numbers, with a leading replicate axis. Image means, tissue means and pooled counts are all
reductions of the same sums, so a thousand replicates cost a thousand weighted sums, not a thousand scorings.

Resampling (`bootstrap_weights`, `permutation_masks`) is documented in docs/evaluate.md exactly enough to be
reproduced bit for bit.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

import pannuke_imagemask as pim

from . import cells, detection, instance, panoptic, pixel
from .predictions.base import pixel_means

CONFIDENCE = 0.95
PERCENTILES = (100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2)  # 2.5 and 97.5: the percentile method
DEFAULT_SEED = 0
DEFAULT_REPLICATES = 1000  # with --compare and no --bootstrap


class Family(NamedTuple):
    """A reference's numbers: its state columns, how a patch fills them, how sums reduce to its numbers."""

    name: str  # the --metrics value and the key under "metrics" in --json
    reference: str  # the source that defines them (project, file, function)
    columns: list
    state: Callable  # (Patch) -> row of len(columns)
    reduce: Callable  # (sums (R, T, K), patches (R,), classified) -> nested dict of (R,) arrays
    default: bool  # computed without --metrics


class Patch:
    """One scored patch: the matching of its maps, the prediction's points, and derived maps on demand."""

    def __init__(self, matching, prediction, radius, classified):
        self.matching, self.prediction, self.radius, self.classified = matching, prediction, radius, classified

    @functools.cached_property
    def pairing(self):
        true_xy, true_types = binary_points(self.matching.true, self.matching.size[1])
        if self.prediction.centroids is None:  # the nuclei of the channels' binary map
            pred_xy, pred_types = binary_points(self.matching.pred, self.matching.size[1])
        else:
            pred_xy, pred_types = self.prediction.centroids, self.prediction.types
        return detection.pairing(true_xy, true_types, pred_xy, pred_types, self.radius)

    @functools.cached_property
    def maps(self):
        return patch_maps(self.matching, self.classified)


class PatchMaps(NamedTuple):
    """The binary maps of a patch as images: instance numbers and classes (0 background, 1..5), (H, W) int64."""

    true_instance: np.ndarray
    true_semantic: np.ndarray
    pred_instance: np.ndarray
    pred_semantic: np.ndarray


def _images(side, size, classified=True):
    instance = np.zeros(size[0] * size[1], dtype=np.int64)
    semantic = np.zeros_like(instance)
    instance[side.pixel] = side.top
    channel = np.repeat(np.arange(len(side.per_channel)), side.per_channel)
    semantic[side.pixel] = channel[side.top - 1] + 1 if classified else 1
    return instance.reshape(size), semantic.reshape(size)


def patch_maps(matching, classified=True):
    """PatchMaps of a matching: the truth's are the builder's instance_mask (renumbered) and semantic_mask."""
    return PatchMaps(*_images(matching.true, matching.size), *_images(matching.pred, matching.size, classified))


def binary_points(side, width):
    """(x, y) and type (channel + 1) of each nucleus seen on a binary map, in number order: the F1's nuclei.

    For the truth these are the nuclei of the builder's instance_mask (the later channel wins, a nucleus
    wholly covered is gone), each at the mean (x, y) of its pixels there.
    """
    n = int(side.per_channel.sum())
    seen = np.flatnonzero(np.bincount(side.top, minlength=n + 1)[1:]) + 1
    rank = np.zeros(n + 1, dtype=np.int64)
    rank[seen] = np.arange(len(seen))
    types = np.repeat(np.arange(1, len(side.per_channel) + 1), side.per_channel)
    return pixel_means(side.pixel, rank[side.top], len(seen), width), types[seen - 1]


# ---------------------------------------------------------------------------------------------
# The families.
# ---------------------------------------------------------------------------------------------


def _hovernet_state(patch):
    paired = patch.pairing
    return np.concatenate([detection.counts_of(paired), detection.confusion_of(paired).ravel()]).astype(np.float64)


HOVERNET_COLUMNS = [*detection.COUNT_COLUMNS, *(f"confusion_{t}_{p}" for t in range(6) for p in range(6))]


def _hovernet_reduce(sums, patches, classified):
    total = sums.sum(axis=1)
    scores = detection.scores(total[:, : len(detection.COUNT_COLUMNS)], classified)
    confusion = total[:, len(detection.COUNT_COLUMNS) :].reshape(len(total), 6, 6)
    per_class = total[:, 4 : len(detection.COUNT_COLUMNS)].reshape(len(total), 5, len(detection.CLASS_COUNTS))
    fp_d, fn_d = detection.CLASS_COUNTS.index("fp_d"), detection.CLASS_COUNTS.index("fn_d")
    return {
        **scores["detection"],
        "per_class": scores["f1_per_class"],
        "confusion": confusion,
        "missed": {name: per_class[:, k, fn_d] for k, name in enumerate(pim.NUCLEUS_CLASSES)},
        "spurious": {name: per_class[:, k, fp_d] for k, name in enumerate(pim.NUCLEUS_CLASSES)},
    }


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "pannuke",
            "PanNuke-metrics run.py (utils.py get_fast_pq): PQ, DQ, SQ per patch; mean over each tissue's patches, "
            "then over the tissues",
            panoptic.PANNUKE_COLUMNS,
            lambda patch: panoptic.pannuke_state(patch.matching, patch.classified),
            lambda sums, patches, classified: panoptic.pannuke_reduce(sums),
            True,
        ),
        Family(
            "hovernet",
            "hover_net compute_stats.py run_nuclei_type_stat (metrics/stats_utils.py pair_coordinates): counts pooled",
            HOVERNET_COLUMNS,
            _hovernet_state,
            _hovernet_reduce,
            True,
        ),
        Family(
            "hovernet_inst",
            instance.REFERENCE,
            instance.COLUMNS,
            lambda patch: instance.patch_state(patch.matching),
            lambda sums, patches, classified: instance.reduce(sums),
            False,
        ),
        Family(
            "cellvit",
            "CellViT inference_cellvit_experiment_pannuke.py calculate_step_metric, run_patch_inference: "
            "plain means over images",
            panoptic.CELLVIT_COLUMNS,
            lambda patch: panoptic.cellvit_state(patch.matching, patch.classified),
            lambda sums, patches, classified: panoptic.cellvit_reduce(sums),
            False,
        ),
        Family(
            "conic",
            "CoNIC compute_stats.py multi_pq+ and get_multi_r2 (sklearn r2_score), adapted to PanNuke's 5 classes",
            panoptic.CONIC_COLUMNS,
            lambda patch: panoptic.conic_state(patch.matching, patch.classified),
            lambda sums, patches, classified: panoptic.conic_reduce(sums, patches=patches),
            False,
        ),
    )
}


def _prefixed(reduce, prefix):
    """The numbers of reduce whose key starts with prefix, the prefix dropped (one state, two references)."""

    def keep(sums, patches, classified):
        return {key[len(prefix) :]: value for key, value in reduce(sums, classified).items() if key.startswith(prefix)}

    return keep


for _family in (
    Family(
        "thunder",
        "MICS-Lab/thunder utils/downstream_metrics.py compute_metrics: sklearn accuracy_score, "
        "balanced_accuracy_score, f1_score and jaccard_score (average='macro') of the split's pooled pixels",
        pixel.COLUMNS,
        lambda patch: pixel.patch_state(patch.maps),
        _prefixed(pixel.reduce, "thunder_"),
        False,
    ),
    Family(
        "pfm_densebench",
        "lingxitong/PFM_Segmentation utils/metrics.py SegmentationMetrics: one confusion matrix of the split's pixels",
        pixel.COLUMNS,
        lambda patch: pixel.patch_state(patch.maps),
        _prefixed(pixel.reduce, "pfm_"),
        False,
    ),
    Family(
        "pathocellbench",
        "Kainmueller-Lab/Pathology-Foundation-Model-Benchmark src/benchmark/run/eval.py Eval, "
        "utils/metric_utils.py: per true nucleus, pooled; sklearn f1_score per class (labels=[c]), macro mean",
        cells.COLUMNS,
        lambda patch: cells.patch_state(patch.maps),
        _prefixed(cells.reduce, "cells_"),
        False,
    ),
):
    FAMILIES[_family.name] = _family
METRIC_NAMES = tuple(FAMILIES)
DEFAULT_METRICS = tuple(name for name, family in FAMILIES.items() if family.default)


def selected(metrics):
    """The families of a --metrics value: None (the defaults), "all", or a comma-separated list."""
    if metrics is None:
        return [FAMILIES[name] for name in DEFAULT_METRICS]
    if metrics == "all":
        return list(FAMILIES.values())
    names = [name.strip() for name in metrics.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown --metrics {', '.join(unknown) or repr(metrics)}; valid: all, {', '.join(FAMILIES)}")
    # Today's headline (pannuke, hovernet) is always computed: the table and the report start with it.
    return [FAMILIES[name] for name in FAMILIES if name in names or FAMILIES[name].default]


def layout(families):
    """{family name: slice of the state row}; column 0 is every patch's 1 (patch counts)."""
    slices, start = {}, 1
    for family in families:
        slices[family.name] = slice(start, start + len(family.columns))
        start += len(family.columns)
    return slices


def patch_state(families, matching, prediction, radius, classified):
    """One patch's state row for the families (column 0 = 1)."""
    patch = Patch(matching, prediction, radius, classified)
    return np.concatenate([[1.0], *(family.state(patch) for family in families)])


# ---------------------------------------------------------------------------------------------
# Reductions: sums per tissue, weighted; resampling.
# ---------------------------------------------------------------------------------------------


def tissue_index(tissues):
    """Each patch's tissue as its position in pim.TISSUES."""
    order = {tissue: k for k, tissue in enumerate(pim.TISSUES)}
    return np.array([order[t] for t in tissues], dtype=np.int64)


def tissue_sums(state, tissues, weights=None):
    """(R, T, K) sums of the state rows of each tissue, each patch weighted by weights (R, N) (default: one row of 1s)."""
    state = np.asarray(state, dtype=np.float64)
    weights = np.ones((1, len(state))) if weights is None else np.asarray(weights, dtype=np.float64)
    sums = np.zeros((len(weights), len(pim.TISSUES), state.shape[1]))
    for t in np.unique(tissues):
        rows = tissues == t
        sums[:, t] = weights[:, rows] @ state[rows]
    return sums


def reduce(families, state, tissues, classified, weights=None):
    """{family name: its numbers, each (R,)} of the state rows, weighted."""
    return reduce_sums(families, tissue_sums(state, tissues, weights), classified)


def reduce_sums(families, sums, classified):
    """{family name: its numbers, each (R,)} of (R, T, K) sums."""
    patches = sums[:, :, 0].sum(axis=1)
    return {
        family.name: family.reduce(sums[:, :, part], patches, classified)
        for family, part in zip(families, layout(families).values())
    }


def bootstrap_weights(tissues, replicates, seed=DEFAULT_SEED):
    """(replicates, N) multiplicities: each replicate draws, in every tissue, as many patches as it has, with
    replacement, from that tissue's patches.

    Exactly: rng = numpy.random.default_rng(seed); for each tissue in pim.TISSUES order that has patches (its
    patches in split order), draws = rng.integers(0, n_t, size=(replicates, n_t)); a patch's weight in a
    replicate is how many times it was drawn there.
    """
    rng = np.random.default_rng(seed)
    weights = np.zeros((replicates, len(tissues)))
    for t in range(len(pim.TISSUES)):
        rows = np.flatnonzero(tissues == t)
        if len(rows) == 0:
            continue
        draws = rng.integers(0, len(rows), size=(replicates, len(rows)))
        flat = draws + len(rows) * np.arange(replicates)[:, None]
        weights[:, rows] = np.bincount(flat.ravel(), minlength=replicates * len(rows)).reshape(replicates, len(rows))
    return weights


def permutation_masks(patches, permutations, seed=DEFAULT_SEED):
    """(permutations, N) 0/1: 1 where a permutation keeps a patch's two predictions, 0 where it swaps them.

    Exactly: numpy.random.default_rng(seed + 1).integers(0, 2, size=(permutations, N)).
    """
    return np.random.default_rng(seed + 1).integers(0, 2, size=(permutations, patches)).astype(np.float64)


def leaves(tree, prefix=()):
    """(path, array) of every (R,) leaf of a nested result, per-tissue numbers and matrices left out."""
    for key, value in tree.items():
        if key == "per_tissue":
            continue
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))
        elif np.ndim(value) == 1:
            yield (*prefix, key), value


def percentile_interval(values):
    """[low, high] of the replicates' values by the percentile method (numpy's linear), NaN replicates left out."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [float("nan")] * 2
    return [float(v) for v in np.percentile(values, PERCENTILES)]


def _nested(pairs):
    out = {}
    for path, value in pairs:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def intervals(families, state, tissues, classified, replicates, seed=DEFAULT_SEED):
    """{family: {number: [low, high]}}: 95% percentile intervals over bootstrap replicates of the patches."""
    replicated = reduce(families, state, tissues, classified, bootstrap_weights(tissues, replicates, seed))
    return _nested((path, percentile_interval(values)) for path, values in leaves(replicated))


def compare(families, state_a, state_b, tissues, classified, replicates, seed=DEFAULT_SEED):
    """{family: {number: {"a", "b", "difference", "interval", "p_value"}}} of two predictions of the same patches.

    The interval is the percentile interval of the difference over paired bootstrap replicates (the same
    weights for both); the p-value is the paired permutation test's: each permutation swaps the two
    predictions of a random half of the patches (permutation_masks), and p = (1 + #{|d*| >= |d|}) / (1 + P).
    """
    full_a = reduce(families, state_a, tissues, classified)
    full_b = reduce(families, state_b, tissues, classified)
    weights = bootstrap_weights(tissues, replicates, seed)
    boot_a = dict(leaves(reduce(families, state_a, tissues, classified, weights)))
    boot_b = dict(leaves(reduce(families, state_b, tissues, classified, weights)))
    keep = permutation_masks(len(tissues), replicates, seed)
    sums_a = tissue_sums(state_a, tissues, keep) + tissue_sums(state_b, tissues, 1 - keep)
    sums_b = tissue_sums(state_a, tissues, 1 - keep) + tissue_sums(state_b, tissues, keep)
    perm_a = dict(leaves(reduce_sums(families, sums_a, classified)))
    perm_b = dict(leaves(reduce_sums(families, sums_b, classified)))
    values_b = dict(leaves(full_b))
    rows = []
    for path, a in leaves(full_a):
        b = values_b[path]
        difference = float(a[0] - b[0])
        permuted = np.abs(perm_a[path] - perm_b[path])
        valid = ~np.isnan(permuted)
        if np.isnan(difference) or not valid.any():
            p_value = float("nan")
        else:
            # A permuted difference equal to the observed one up to rounding counts as at least as extreme.
            extreme = permuted[valid] >= abs(difference) - 1e-12
            p_value = float((1 + extreme.sum()) / (1 + valid.sum()))
        rows.append(
            (
                path,
                {
                    "a": float(a[0]),
                    "b": float(b[0]),
                    "difference": difference,
                    "interval": percentile_interval(boot_a[path] - boot_b[path]),
                    "p_value": p_value,
                },
            )
        )
    return _nested(rows)
