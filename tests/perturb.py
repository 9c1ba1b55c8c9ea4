"""A randomised prediction of a patch, made from its truth: the input of the metric tests."""

import numpy as np


def _erode(mask):
    inner = mask.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        inner &= np.roll(mask, shift, axis=axis)
    return inner


def perturb(truth, rng):
    """A prediction from the truth: nuclei shifted, eroded, merged, split, dropped, relabelled, spurious ones."""
    pred = np.zeros(truth.shape[:2] + (5,), dtype=np.int64)
    new_ids = iter(rng.choice(np.arange(1, 200_000), size=4000, replace=False))  # not consecutive
    last_in = {}
    for c in range(5):
        for value in np.unique(truth[..., c]):
            if value == 0:
                continue
            mask = truth[..., c] == value
            action = rng.choice(["keep", "shift", "erode", "merge", "split", "drop", "relabel"])
            channel, new = c, next(new_ids)
            if action == "drop":
                continue
            if action == "shift":
                mask = np.roll(mask, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
            elif action == "erode":
                mask = _erode(mask)
            elif action == "merge" and c in last_in:
                new = last_in[c]
            elif action == "relabel":
                channel = int(rng.integers(5))
            elif action == "split":
                cols = np.nonzero(mask.any(axis=0))[0]
                right = mask.copy()
                right[:, : cols[len(cols) // 2]] = False
                pred[..., channel][right] = next(new_ids)
                mask = mask & ~right
            pred[..., channel][mask] = new
            last_in[channel] = new
    yy, xx = np.ogrid[: truth.shape[0], : truth.shape[1]]
    for _ in range(int(rng.integers(0, 6))):
        cy, cx, r = rng.integers(0, truth.shape[0], size=2).tolist() + [int(rng.integers(2, 8))]
        pred[..., int(rng.integers(5))][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = next(new_ids)
    return pred
