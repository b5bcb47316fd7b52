"""Brute-force AUPRO, written for obviousness rather than speed, to check ``onenip.metrics.pixel_aupro``.

Same definition as the MVTec AD evaluation code: regions are 8-connected components of each mask, PRO at a
threshold is the mean over regions of the fraction of the region at or above it, FPR is over every normal
pixel, and the curve (starting at (0, 0)) is integrated with the trapezoid rule up to ``fpr_limit``,
interpolating linearly there, then divided by ``fpr_limit``.

Nothing is shared with ``onenip.metrics``: components come from a plain flood fill, and every distinct score
is a threshold evaluated over all pixels (O(thresholds x pixels), small inputs only).
"""

from __future__ import annotations

import numpy as np


def connected_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a 2-D bool mask, each a list of ``(row, col)`` pixels."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for row in range(height):
        for col in range(width):
            if not mask[row, col] or seen[row, col]:
                continue
            region, stack = [], [(row, col)]
            seen[row, col] = True
            while stack:
                r, c = stack.pop()
                region.append((r, c))
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        nr, nc = r + dr, c + dc
                        if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not seen[nr, nc]:
                            seen[nr, nc] = True
                            stack.append((nr, nc))
            regions.append(region)
    return regions


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` at every distinct score, from the highest threshold down, with (0, 0) first.

    ``maps`` and ``masks``: ``(N, H, W)`` arrays or lists of ``(H, W)`` arrays (sizes may differ).
    """
    region_scores = []  # one array of scores per region, over all images
    normal_scores = []
    for anomaly_map, mask in zip(maps, masks, strict=True):
        anomaly_map, mask = np.asarray(anomaly_map, dtype=np.float64), np.asarray(mask) > 0
        for region in connected_regions(mask):
            region_scores.append(np.array([anomaly_map[r, c] for r, c in region]))
        normal_scores.append(anomaly_map[~mask])
    normal_scores = np.concatenate(normal_scores)
    all_scores = np.concatenate([normal_scores, *region_scores])
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(all_scores)[::-1]:
        fprs.append(float(np.mean(normal_scores >= threshold)))
        pros.append(float(np.mean([np.mean(scores >= threshold) for scores in region_scores])))
    return np.array(fprs), np.array(pros)


def integrate_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x`` in ``[0, x_max]``; ``x`` non-decreasing, interpolated at ``x_max``."""
    area = 0.0
    for i in range(len(x) - 1):
        x0, x1, y0, y1 = x[i], x[i + 1], y[i], y[i + 1]
        if x1 <= x_max:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < x_max:
                y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
                area += (x_max - x0) * (y0 + y_max) / 2
            break
    return area


def aupro_reference(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in ``[0, fpr_limit]``; inputs as for ``pro_curve``."""
    fprs, pros = pro_curve(maps, masks)
    return integrate_up_to(fprs, pros, fpr_limit) / fpr_limit
