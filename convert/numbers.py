"""The one array helper every metric reduction shares: a ratio that is defined where its denominator is 0."""

import numpy as np


def ratio(numerator, denominator, fill=np.nan):
    """numerator / denominator elementwise, fill (NaN by default) where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), fill)


# A histogram over the span of the values beats a sort of the values while the span is at most this much
# plus this many slots per value (PanNuke's ids and HoVer-Net's 1..n both are).
DENSE_SPAN, DENSE_SPAN_PER_VALUE = 1 << 16, 8


def distinct(values):
    """(the distinct values in increasing order, the index of each value among them) of non-negative integers.

    np.unique's result, by one histogram when the values' span is small beside their number, else by a sort.
    """
    values = np.asarray(values).reshape(-1)
    span = int(values.max()) + 1 if values.size else 0
    if span <= DENSE_SPAN + DENSE_SPAN_PER_VALUE * len(values):
        present = np.bincount(values, minlength=span).astype(bool)
        return np.flatnonzero(present).astype(values.dtype), (np.cumsum(present) - 1)[values]
    unique, inverse = np.unique(values, return_inverse=True)
    return unique, inverse.reshape(-1)
