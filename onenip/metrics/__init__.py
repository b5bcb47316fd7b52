"""Image- and pixel-level anomaly detection metrics, computed at the ground-truth mask resolution.

Plain functions over numpy arrays (torch tensors are accepted and moved to numpy) that return floats:

- image level: ``image_auroc``, ``image_ap``, ``image_f1max`` (sklearn, exact), and
  ``paired_auroc_difference`` (two scorers of the same images, DeLong's standard error);
- pixel level: ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max``, ``pixel_aupro``;
- ``compute_metrics`` gathers them under the names in ``METRIC_NAMES``; categories without masks get the
  image metrics only.

Pixel metrics take anomaly maps and masks of the same shape: ``(N, H, W)`` arrays (``(N, 1, H, W)`` is
squeezed) or a sequence of ``(H, W)`` arrays when image sizes differ. Maps at another resolution go through
``resize_maps_to_masks`` first. Masks are 0/1, 0/255 or bool and are binarised with ``> 0``.

Memory stays bounded on large test sets. Up to ``EXACT_PIXEL_LIMIT`` pixels the pixel metrics are exact
(sklearn for AUROC/AP/F1max, one bin per distinct score for AUPRO). Above it they come from a histogram of
at most ``num_bins`` score bins (``pixel_histogram``), which costs ``O(num_bins)`` memory, one image and a
batch of scores at a time, and bounded samples of the scores (about 10 MB in all at 50M pixels). Bin edges
follow the ranks of the scores (``edges="quantile"``, the default), so skewed maps, most pixels near 0 and
a few near 1, still spread over all bins; equal-width bins over ``[min, max]`` (``edges="uniform"``) are
kept for comparison. Every threshold of the binned path is also a threshold of the exact computation, and
the histogram knows how far the exact value can be, so each binned value comes with a bound on its error
(``BinnedEstimate.error_bound``, derivations in the ``ScoreHistogram`` methods), whatever the edges. Bins
whose scores are all equal are exact and add nothing to the bound; a warning is raised when a bound
exceeds ``BINNED_WARN_BOUND``.

AUPRO follows the MVTec AD evaluation code (Bergmann et al., IJCV 2021): ground-truth regions are the
8-connected components of each mask (``scipy.ndimage.label`` with a 3x3 structure of ones), PRO at a
threshold is the mean over all regions of the fraction of each region at or above it, FPR counts every
normal pixel of every image, and the PRO-over-FPR curve is integrated with the trapezoid rule up to
``fpr_limit`` (interpolated there) and divided by ``fpr_limit``.

See Also:
    ``tests/helpers/aupro_reference.py`` (brute-force AUPRO the tests compare against), ``onenip.plots``.

Modules, one job each: ``checks`` (argument checks and conversions), ``curves`` (``RocCurve``, ``PrCurve``),
``image`` (image metrics and curves), ``pixel`` (pixel metrics and curves, exact or binned), ``histogram``
(``ScoreHistogram`` and the error bounds), ``edges`` (quantile bin edges), ``resize``
(``resize_maps_to_masks``) and ``compute`` (``compute_metrics``). Everything is re-exported here, so
``from onenip.metrics import compute_metrics`` keeps working; to change ``EXACT_PIXEL_LIMIT`` at run time,
set it on ``onenip.metrics.pixel``, the module that reads it.
"""

from __future__ import annotations

from onenip.metrics.checks import (
    ArrayLike,
    BinEdges,
    Method,
    check_finite,
    has_both_classes,
    is_bin_edges,
    is_binary_labels,
    is_binary_mask,
    is_fpr_limit,
    is_method,
    is_num_bins,
    is_same_shape,
)
from onenip.metrics.compute import IMAGE_METRIC_NAMES, METRIC_NAMES, PIXEL_METRIC_NAMES, compute_metrics
from onenip.metrics.curves import PrCurve, RocCurve
from onenip.metrics.edges import QUANTILE_SAMPLE_SIZE, QUANTILE_SEED, TOP_SAMPLE_SCALE
from onenip.metrics.histogram import (
    ACCUMULATE_BATCH,
    DEFAULT_FPR_LIMIT,
    DEFAULT_NUM_BINS,
    REGION_STRUCTURE,
    BinnedEstimate,
    ScoreHistogram,
    pixel_histogram,
)
from onenip.metrics.image import image_ap, image_auroc, image_f1max, paired_auroc_difference, pr_curve_points, roc_curve_points
from onenip.metrics.pixel import (
    BINNED_WARN_BOUND,
    EXACT_PIXEL_LIMIT,
    pixel_ap,
    pixel_aupro,
    pixel_auroc,
    pixel_f1max,
    pixel_pr_curve_points,
    pixel_roc_curve_points,
)
from onenip.metrics.resize import resize_maps_to_masks

__all__ = [
    "ACCUMULATE_BATCH",
    "BINNED_WARN_BOUND",
    "DEFAULT_FPR_LIMIT",
    "DEFAULT_NUM_BINS",
    "EXACT_PIXEL_LIMIT",
    "IMAGE_METRIC_NAMES",
    "METRIC_NAMES",
    "PIXEL_METRIC_NAMES",
    "QUANTILE_SAMPLE_SIZE",
    "QUANTILE_SEED",
    "REGION_STRUCTURE",
    "TOP_SAMPLE_SCALE",
    "ArrayLike",
    "BinEdges",
    "BinnedEstimate",
    "Method",
    "PrCurve",
    "RocCurve",
    "ScoreHistogram",
    "check_finite",
    "compute_metrics",
    "has_both_classes",
    "image_ap",
    "image_auroc",
    "image_f1max",
    "is_bin_edges",
    "is_binary_labels",
    "is_binary_mask",
    "is_fpr_limit",
    "is_method",
    "is_num_bins",
    "is_same_shape",
    "paired_auroc_difference",
    "pixel_ap",
    "pixel_aupro",
    "pixel_auroc",
    "pixel_f1max",
    "pixel_histogram",
    "pixel_pr_curve_points",
    "pixel_roc_curve_points",
    "pr_curve_points",
    "resize_maps_to_masks",
    "roc_curve_points",
]
