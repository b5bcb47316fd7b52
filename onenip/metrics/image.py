"""Image-level metrics and curves: one score per image against its 0/1 label (sklearn, exact)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from onenip.metrics.checks import ArrayLike, check_image_inputs
from onenip.metrics.curves import PrCurve, RocCurve


def roc_curve_points(scores: ArrayLike, labels: ArrayLike) -> RocCurve:
    """Image-level ROC curve of ``(N,)`` scores against ``(N,)`` 0/1 labels (sklearn, exact)."""
    scores, labels = check_image_inputs(scores, labels)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds.astype(np.float64))


def pr_curve_points(scores: ArrayLike, labels: ArrayLike) -> PrCurve:
    """Image-level precision-recall curve of ``(N,)`` scores against ``(N,)`` 0/1 labels (sklearn, exact)."""
    scores, labels = check_image_inputs(scores, labels)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    return PrCurve(precision=precision, recall=recall, thresholds=thresholds.astype(np.float64))



def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``(N,)`` image scores against ``(N,)`` 0/1 labels."""
    scores, labels = check_image_inputs(scores, labels)
    return float(roc_auc_score(labels, scores))


def paired_auroc_difference(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """``AUROC(a) - AUROC(b)`` of two scorers of the same images and its standard error (DeLong, DeLong
    and Clarke-Pearson 1988), which accounts for both being measured on the same samples.

    Each anomalous image's share of normal images scored below it (ties half) and each normal image's
    share of anomalous images scored above it are the two AUROCs' structural components; the variance of
    the difference is that of the components' differences, over anomalies and over normals."""
    scores_a, positive = check_image_inputs(scores_a, labels)
    scores_b, _ = check_image_inputs(scores_b, labels)

    def components(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        anomalous, normal = scores[positive][:, None], scores[~positive][None, :]
        above = (anomalous > normal) + 0.5 * (anomalous == normal)  # (anomalies, normals)
        return above.mean(axis=1), above.mean(axis=0)

    (anomalies_a, normals_a), (anomalies_b, normals_b) = components(scores_a), components(scores_b)
    difference = float(anomalies_a.mean() - anomalies_b.mean())
    by_anomaly, by_normal = anomalies_a - anomalies_b, normals_a - normals_b
    variance = (by_anomaly.var(ddof=1) if len(by_anomaly) > 1 else 0.0) / len(by_anomaly) + (
        by_normal.var(ddof=1) if len(by_normal) > 1 else 0.0) / len(by_normal)  # fmt: skip
    return difference, float(np.sqrt(variance))


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision (sklearn's step-wise area under the PR curve) of ``(N,)`` image scores."""
    scores, labels = check_image_inputs(scores, labels)
    return float(average_precision_score(labels, scores))


def image_f1max(scores: ArrayLike, labels: ArrayLike) -> float:
    """Best F1 over all thresholds of the image-level precision-recall curve."""
    return pr_curve_points(scores, labels).f1max()
