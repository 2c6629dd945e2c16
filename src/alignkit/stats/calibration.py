"""Calibration of a reward model's preference probabilities.

A Bradley-Terry reward model predicts ``p = P(chosen > rejected) = sigmoid(r_c - r_r)``. Its predicted winner is
the response with the higher reward, with confidence ``c = max(p, 1 - p)`` in ``[0.5, 1]``; it is right when the
predicted winner is the labelled chosen response (a tie, p = 0.5, counts as half right). Expected calibration
error (Naeini et al. 2015, "Obtaining Well Calibrated Probabilities Using Bayesian Binning"; Guo et al. 2017,
"On Calibration of Modern Neural Networks", arXiv:1706.04599) over equal-width confidence bins
``[0.5, 0.5 + w), ..., [1 - w, 1]`` (w = 0.5 / bins, the last bin closed):

    ECE = sum_b (n_b / N) * | accuracy_b - mean confidence_b |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Reliability:
    """Per-bin counts, mean confidence and accuracy (NaN for empty bins), and the ECE."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float

    def as_dict(self) -> dict[str, Any]:
        clean = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731
        return {"ece": self.ece, "edges": self.edges.tolist(), "counts": self.counts.astype(int).tolist(),
                "confidence": clean(self.confidence), "accuracy": clean(self.accuracy)}


def preference_confidence(margins: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correctness) of the predicted winner from reward margins ``r_c - r_r``."""
    m = np.asarray(margins, dtype=float)
    p = 1.0 / (1.0 + np.exp(-m))
    confidence = np.maximum(p, 1 - p)
    correct = np.where(m > 0, 1.0, np.where(m < 0, 0.0, 0.5))
    return confidence, correct


def reliability(margins: Sequence[float] | np.ndarray, bins: int = 10) -> Reliability:
    """Reliability table and ECE of BT preference probabilities, from reward margins ``r_c - r_r``."""
    confidence, correct = preference_confidence(margins)
    if confidence.size == 0:
        raise ValueError("no pairs to calibrate")
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    gaps = np.where(counts > 0, np.abs(np.nan_to_num(accuracy) - np.nan_to_num(mean_conf)), 0.0)
    return Reliability(edges, counts, mean_conf, accuracy, float((counts / counts.sum() * gaps).sum()))
