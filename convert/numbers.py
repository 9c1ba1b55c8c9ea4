"""The one array helper every metric reduction shares: a ratio that is defined where its denominator is 0."""

import numpy as np


def ratio(numerator, denominator, fill=np.nan):
    """numerator / denominator elementwise, fill (NaN by default) where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), fill)
