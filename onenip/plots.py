"""Pictures people look at: ROC and precision-recall plots of ``onenip.metrics`` curves, and heatmap
overlays of anomaly maps, written as PNG.

Uses matplotlib's Agg canvas directly (no pyplot), so it works headless and leaves no global figure state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from PIL import Image

from onenip.metrics.curves import PrCurve, RocCurve


def plot_curves(
    path: str | Path,
    image_roc: RocCurve,
    image_pr: PrCurve,
    pixel_roc: RocCurve | None = None,
    pixel_pr: PrCurve | None = None,
    *,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """Write ROC (left) and PR (right) curves, image level and, when given, pixel level, to a PNG.

    Legends carry the area of each curve (AUROC; AP as sklearn's step-wise sum). Returns ``path``.

    Example::

        from onenip.metrics import pr_curve_points, roc_curve_points
        plot_curves("curves.png", roc_curve_points(scores, labels), pr_curve_points(scores, labels))
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        msg = f"Expected a .png path for the curves plot, got {path}"
        raise ValueError(msg)
    if (pixel_roc is None) != (pixel_pr is None):
        msg = "Pass both pixel_roc and pixel_pr, or neither"
        raise ValueError(msg)
    figure = Figure(figsize=(10, 4.5), dpi=dpi)
    FigureCanvasAgg(figure)
    roc_axes, pr_axes = figure.subplots(1, 2)

    levels = [("image", image_roc, image_pr)]
    if pixel_roc is not None and pixel_pr is not None:
        levels.append(("pixel", pixel_roc, pixel_pr))
    for level, roc, pr in levels:
        roc_axes.plot(roc.fpr, roc.tpr, label=f"{level} (AUROC {roc.auc():.3f})")
        pr_axes.step(pr.recall, pr.precision, where="post", label=f"{level} (AP {pr.average_precision():.3f})")

    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    pr_axes.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for axes in (roc_axes, pr_axes):
        axes.legend(loc="lower right" if axes is roc_axes else "lower left")
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def heatmap_overlay(image: Image.Image, anomaly_map: np.ndarray, vmax: float, mask: np.ndarray | None) -> Image.Image:
    """Image | heatmap overlay, with the ground-truth outline in green where a mask exists."""
    from matplotlib import colormaps

    heat = np.clip(anomaly_map / max(vmax, 1e-8), 0, 1)
    colours = (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (0.55 * base + 0.45 * colours).astype(np.uint8)
    if mask is not None and mask.any():
        from scipy import ndimage

        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        blended[edge] = (0, 255, 0)
    return Image.fromarray(np.concatenate([np.asarray(image.convert("RGB")), blended], axis=1))


HEADER_PX = 22
BAR_PX = 14


def prediction_overlay(image: Image.Image, anomaly_map: np.ndarray, score: float, threshold: float) -> Image.Image:
    """What a quality engineer reads at a glance: image | heatmap overlay with the predicted region
    outlined (map above the threshold), a header with score, threshold and verdict (red: anomalous,
    green: normal), and a colour bar under the overlay from 0 to twice the threshold, the threshold marked.

    The colour scale is the same for every image of a model (0 to 2 x threshold), so images compare."""
    from PIL import ImageDraw
    from scipy import ndimage

    vmax = max(2.0 * threshold, 1e-6)
    pair = heatmap_overlay(image, anomaly_map, vmax, None)
    width, height = pair.size
    half = width // 2
    region = anomaly_map > threshold
    if region.any():
        pixels = np.asarray(pair).copy()
        edge = region & ~ndimage.binary_erosion(region, iterations=2)
        pixels[:, half:][edge] = (255, 255, 255)
        pair = Image.fromarray(pixels)
    anomalous = score > threshold
    canvas = Image.new("RGB", (width, HEADER_PX + height + BAR_PX), (255, 255, 255))
    canvas.paste(pair, (0, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width, HEADER_PX - 1), fill=(200, 30, 30) if anomalous else (30, 140, 60))
    verdict = "ANOMALY" if anomalous else "normal"
    draw.text((4, 5), f"{verdict}   score {score:.3f}   threshold {threshold:.3f}", fill=(255, 255, 255))
    draw_colour_bar(canvas, (half, HEADER_PX + height, width, HEADER_PX + height + BAR_PX), vmax, threshold)
    return canvas


def draw_colour_bar(canvas: Image.Image, box: tuple[int, int, int, int], vmax: float, threshold: float) -> None:
    """The heatmap's colour scale (``jet`` from 0 to ``vmax``) in ``box`` of ``canvas``, a black tick at the threshold."""
    from matplotlib import colormaps

    left, top, right, bottom = box
    ramp = (colormaps["jet"](np.linspace(0, 1, max(right - left, 1)))[:, :3] * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(ramp[None], bottom - top, axis=0)), (left, top))
    tick = left + round((right - left - 1) * min(threshold / vmax, 1.0))
    canvas.paste((0, 0, 0), (tick - 1, top, tick + 1, bottom))
