"""A page a person opens to review predictions: ``index.html`` with every image sorted by score, filters,
the threshold, the model version and a histogram of the scores. One self-contained file (inline CSS,
a few lines of plain JavaScript, the histogram as inline SVG): no server, no build step; the images are
linked by relative paths, so the folder can be moved or zipped as a whole."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

PREDICT_KINDS = {"anomalous": "Anomalous", "normal": "Normal", "error": "Errors"}
EVALUATE_KINDS = {"missed": "Missed defects", "false-alarm": "False alarms", "found": "Found defects", "normal": "Normal"}
_COLOURS = {"anomalous": "#c62828", "missed": "#ef6c00", "false-alarm": "#c62828", "found": "#2e7d32", "normal": "#1565c0",
            "error": "#616161"}  # fmt: skip


@dataclass(frozen=True)
class ReportItem:
    """One image on the page."""

    name: str
    kind: str
    """A key of the page's kinds (``PREDICT_KINDS`` or ``EVALUATE_KINDS``): what the filters select."""
    score: float | None = None
    image: Path | None = None
    """What to show: the heatmap overlay when there is one, else the image itself; None for an unreadable file."""
    detail: str = ""
    """Category, defect type, or the reason a file could not be scored."""


def predict_items(rows: Sequence[dict[str, object]], failures: Sequence[dict[str, str]]) -> list[ReportItem]:
    """``predict_files`` rows and failures -> page items, highest score first, unreadable files last."""
    items = [
        ReportItem(_short(str(r["image_path"])), "anomalous" if r["is_anomaly"] else "normal", float(r["score"]),  # type: ignore[arg-type]
                   Path(str(r.get("heatmap") or r["image_path"])), str(r.get("category") or ""))  # fmt: skip
        for r in rows
    ]
    items.sort(key=lambda item: -(item.score or 0.0))
    return items + [ReportItem(_short(f["image_path"]), "error", detail=f["error"]) for f in failures]


def _short(path: str) -> str:
    """The file with its folder (``broken_large/004.png``): names repeat across folders."""
    return "/".join(Path(path).parts[-2:])


def evaluation_items(
    paths: Sequence[str], labels: Sequence[int], scores: Sequence[float], threshold: float, defect_types: Sequence[str],
    overlays: dict[str, Path],
) -> list[ReportItem]:  # fmt: skip
    """A test split -> page items: missed defects first (lowest score first), then false alarms (highest
    first), then the rest by descending score: the mistakes are what a quality engineer looks at."""
    items = []
    for path, label, score, defect in zip(paths, labels, scores, defect_types, strict=True):
        if label == 1:
            kind = "found" if score > threshold else "missed"
        else:
            kind = "false-alarm" if score > threshold else "normal"
        items.append(ReportItem(_short(path), kind, float(score), overlays.get(path, Path(path)), defect))
    first = {"missed": 0, "false-alarm": 1}
    return sorted(items, key=lambda i: (first.get(i.kind, 2), (i.score or 0.0) if i.kind == "missed" else -(i.score or 0.0)))


def score_histogram_svg(items: Sequence[ReportItem], threshold: float, bins: int = 30, width: int = 640, height: int = 160) -> str:
    """Stacked histogram of the scores per kind with the threshold as a vertical line (inline SVG)."""
    scored = [i for i in items if i.score is not None]
    if not scored:
        return ""
    values = np.array([i.score for i in scored], dtype=float)
    low, high = float(min(values.min(), threshold)), float(max(values.max(), threshold))
    high = high if high > low else low + 1.0
    edges = np.linspace(low, high, bins + 1)
    kinds = list(dict.fromkeys(i.kind for i in scored))
    counts = {k: np.histogram([i.score for i in scored if i.kind == k], edges)[0] for k in kinds}
    peak = max(1, int(sum(counts.values()).max()))  # type: ignore[union-attr]
    pad, plot_h = 30, height - 40
    bar_w = (width - 2 * pad) / bins

    def x(value: float) -> float:
        return pad + (value - low) / (high - low) * (width - 2 * pad)

    parts = [f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="Histogram of scores with the threshold">']  # fmt: skip
    base = np.zeros(bins)
    for kind in kinds:
        for b in np.nonzero(counts[kind])[0]:
            h = counts[kind][b] / peak * plot_h
            y = 10 + plot_h - (base[b] / peak * plot_h) - h
            parts.append(f'<rect class="bar" x="{pad + b * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{_COLOURS.get(kind, "#888")}"><title>{kind}: {counts[kind][b]}</title></rect>')  # fmt: skip
        base += counts[kind]
    tx = x(threshold)
    parts.append(f'<line id="threshold-line" x1="{tx:.1f}" x2="{tx:.1f}" y1="5" y2="{10 + plot_h}" stroke="black" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{tx + 4:.1f}" y="16" font-size="12">threshold {threshold:.4g}</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="11">{low:.4g}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">{high:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _link(image: Path | None, folder: Path) -> str | None:
    if image is None:
        return None
    return quote(Path(os.path.relpath(Path(image).resolve(), folder.resolve())).as_posix())


def write_report(
    folder: str | Path, items: Sequence[ReportItem], *, title: str, threshold: float, model: str, kinds: dict[str, str],
    summary: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """Write ``folder/index.html`` for ``items`` (in the order given) and return its path."""
    import jinja2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {kind: sum(i.kind == kind for i in items) for kind in kinds}
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_TEMPLATE)
    html = template.render(
        title=title, model=model, threshold=f"{threshold:.4g}", created=time.strftime("%Y-%m-%d %H:%M:%S"),
        kinds=kinds, counts=counts, total=len(items), summary=summary or {}, colours=_COLOURS,
        histogram=score_histogram_svg(items, threshold),
        items=[{"name": i.name, "kind": i.kind, "label": kinds.get(i.kind, i.kind), "detail": i.detail,
                "score": "-" if i.score is None else f"{i.score:.4f}", "src": _link(i.image, folder)} for i in items],
    )  # fmt: skip
    path = folder / "index.html"
    path.write_text(html, encoding="utf-8")
    return path


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #212121; }
header p { margin: .2rem 0; }
.filters button { margin: .2rem .3rem .2rem 0; padding: .3rem .8rem; border: 1px solid #999; background: #fff; cursor: pointer; }
.filters button.active { background: #212121; color: #fff; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px; margin-top: 1rem; }
.card { border: 1px solid #ddd; border-left: 6px solid var(--c); padding: 6px; font-size: 13px; }
.card img { width: 100%; height: auto; display: block; background: #eee; }
.card .meta { margin-top: 4px; overflow-wrap: anywhere; }
.card .verdict { font-weight: bold; color: var(--c); }
.card[hidden] { display: none; }
table.summary td { padding: 0 1rem 0 0; }
</style></head>
<body>
<header>
<h1>{{ title }}</h1>
<p>Model: <code id="model">{{ model }}</code></p>
<p>Threshold: <strong id="threshold">{{ threshold }}</strong> (a score above it is anomalous)</p>
<p>{{ total }} images; written {{ created }}</p>
{% if summary %}<table class="summary">{% for key, value in summary.items() %}<tr><td>{{ key }}</td><td>{{ value }}</td></tr>{% endfor %}</table>{% endif %}
</header>
{{ histogram | safe }}
<div class="filters">
<button type="button" data-filter="all" class="active">All ({{ total }})</button>
{% for kind, label in kinds.items() %}<button type="button" data-filter="{{ kind }}">{{ label }} ({{ counts[kind] }})</button>
{% endfor %}
<span id="shown">{{ total }} shown</span>
</div>
<div id="grid">
{% for item in items %}<figure class="card" data-kind="{{ item.kind }}" style="--c: {{ colours.get(item.kind, '#888') }}">
{% if item.src %}<img src="{{ item.src }}" alt="{{ item.name }}" loading="lazy">{% endif %}
<figcaption class="meta"><span class="verdict">{{ item.label }}</span> · score <span class="score">{{ item.score }}</span><br>{{ item.name }}{% if item.detail %}<br><small>{{ item.detail }}</small>{% endif %}</figcaption>
</figure>
{% endfor %}
</div>
<script>
document.querySelectorAll(".filters button").forEach(function (button) {
  button.addEventListener("click", function () {
    var wanted = button.dataset.filter, shown = 0;
    document.querySelectorAll(".filters button").forEach(function (b) { b.classList.toggle("active", b === button); });
    document.querySelectorAll("#grid .card").forEach(function (card) {
      card.hidden = wanted !== "all" && card.dataset.kind !== wanted;
      if (!card.hidden) { shown += 1; }
    });
    document.getElementById("shown").textContent = shown + " shown";
  });
});
</script>
</body></html>
"""
