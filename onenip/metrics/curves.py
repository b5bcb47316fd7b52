"""ROC and precision-recall curves as data (sklearn's layouts), and F1max from a precision-recall curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RocCurve:
    """ROC curve, points ordered by decreasing threshold (sklearn's ``roc_curve`` layout)."""

    fpr: np.ndarray  # (K,) float64, non-decreasing, starts at 0
    tpr: np.ndarray  # (K,) float64, non-decreasing, starts at 0
    thresholds: np.ndarray  # (K,) float64, decreasing; thresholds[0] = inf (nothing predicted anomalous)

    def auc(self) -> float:
        return float(np.trapezoid(self.tpr, self.fpr))


@dataclass(frozen=True)
class PrCurve:
    """Precision-recall curve in sklearn's ``precision_recall_curve`` layout."""

    precision: np.ndarray  # (K + 1,) float64; the last point is (recall 0, precision 1) and has no threshold
    recall: np.ndarray  # (K + 1,) float64, non-increasing, ends at 0
    thresholds: np.ndarray  # (K,) float64, increasing

    def average_precision(self) -> float:
        """Step-wise area, as ``sklearn.metrics.average_precision_score``."""
        return float(-np.sum(np.diff(self.recall) * self.precision[:-1]))

    def f1max(self) -> float:
        return f1max(self.precision, self.recall)


def f1max(precision: np.ndarray, recall: np.ndarray) -> float:
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(f1.max())
