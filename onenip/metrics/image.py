"""Image-level metrics and curves: one score per image against its 0/1 label (sklearn, exact)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from onenip.metrics.checks import ArrayLike, _check_image_inputs
from onenip.metrics.curves import PrCurve, RocCurve


def roc_curve_points(scores: ArrayLike, labels: ArrayLike) -> RocCurve:
    """Image-level ROC curve of ``(N,)`` scores against ``(N,)`` 0/1 labels (sklearn, exact)."""
    scores, labels = _check_image_inputs(scores, labels)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds.astype(np.float64))


def pr_curve_points(scores: ArrayLike, labels: ArrayLike) -> PrCurve:
    """Image-level precision-recall curve of ``(N,)`` scores against ``(N,)`` 0/1 labels (sklearn, exact)."""
    scores, labels = _check_image_inputs(scores, labels)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    return PrCurve(precision=precision, recall=recall, thresholds=thresholds.astype(np.float64))



def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``(N,)`` image scores against ``(N,)`` 0/1 labels."""
    scores, labels = _check_image_inputs(scores, labels)
    return float(roc_auc_score(labels, scores))


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision (sklearn's step-wise area under the PR curve) of ``(N,)`` image scores."""
    scores, labels = _check_image_inputs(scores, labels)
    return float(average_precision_score(labels, scores))


def image_f1max(scores: ArrayLike, labels: ArrayLike) -> float:
    """Best F1 over all thresholds of the image-level precision-recall curve."""
    return pr_curve_points(scores, labels).f1max()
