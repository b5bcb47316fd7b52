"""A registered version's model card: what its score is made of and what its trained network adds.

Read from the saved model's ``onenip.json`` (no weights loaded): the category's scoring rule (which of
the five maps, their weights, smoothing, pooling), the validation metrics of that rule, of the best rule
among the network's maps alone and among the statistics' alone (Gaussian, memory bank), and what the
network adds on validation (the chosen rule's score minus the statistics-only rule's, with its paired
bootstrap standard error). Validation data are training images only; test metrics, when the pipeline has
them, are listed apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onenip.models.scoring import COMPONENTS

MAP_NAMES = {
    "recon": "reconstruction error (OneNIP network)",
    "refiner": "refiner (OneNIP network, trained on synthetic anomalies)",
    "residual": "prompt residual (nearest prompt patch)",
    "gaussian": "per-position Gaussian (PaDiM's statistic)",
    "memory": "memory bank (PatchCore's statistic)",
}
SCORED = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AP")


def _rule_text(rule: dict[str, Any]) -> str:
    parts = [f"{weight:g} x {MAP_NAMES[name]}" for name, weight in zip(COMPONENTS, rule["weights"], strict=True) if weight]
    return f"{' + '.join(parts)}; Gaussian smoothing sigma {rule['smoothing_sigma']:g} px; image score = max of the {rule['score_pool_size']} px box mean"


def _metrics_text(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "-"
    return " / ".join(f"{metrics[m]:.3f}" if m in metrics else "-" for m in SCORED)


def _adds_text(adds: dict[str, float]) -> str:
    return f"{adds['difference']:+.4f} (SE {adds['standard_error']:.4f})"


def network_text(meta: dict[str, Any]) -> str:
    if meta.get("network") == "none":
        return "not trained (statistics only)"
    probe = meta.get("network_probe") or {}
    if probe.get("left_out"):
        adds = ", ".join(f"{c} {_adds_text(a)}" for c, a in probe["network_adds"].items())
        return (f"OneNIP trained {probe['epoch']} epochs, then left out by `train.network: auto` (statistics only): on "
                f"validation it added no more than {probe['margin_se']:g} standard error(s) over statistics only ({adds})")
    return f"OneNIP, trained {meta.get('epochs')} epochs, epoch {meta.get('kept_epoch')} kept"


def network_summary(config: dict[str, Any], category: str) -> dict[str, str]:
    """Tags of a version: its rule, the network's share of it, and what the network adds on validation."""
    rule = config["scoring"][category]
    adds = ((config.get("metadata") or {}).get("selection") or {}).get("network_adds", {}).get(category)
    tags = {"onenip.scoring_rule": json.dumps(rule), "onenip.network_weight": f"{sum(rule['weights'][:3]):g}"}
    if adds:
        tags["onenip.network_adds"] = _adds_text(adds)
    probe = (config.get("metadata") or {}).get("network_probe") or {}
    if probe.get("left_out") and category in probe["network_adds"]:  # ``auto`` left it out: what it added then
        tags["onenip.network_adds"] = f"{_adds_text(probe['network_adds'][category])} at epoch {probe['epoch']}, left out"
    return tags


def model_card(model_dir: str | Path, category: str, test_metrics: dict[str, float] | None = None) -> str:
    """The markdown model card of one category of a saved model."""
    config = json.loads((Path(model_dir) / "onenip.json").read_text())
    meta = config.get("metadata") or {}
    selection = meta.get("selection") or {}
    rule = config["scoring"][category]
    geometry = config["geometries"][category]
    restricted = selection.get("restricted") or {}
    validated = selection.get("metrics") or {}
    lines = [
        f"# {category}: model card",
        "",
        "## What the score is made of",
        f"- Anomaly map: {_rule_text(rule)}.",
        f"- Network share of the map: {sum(rule['weights'][:3]):g} (reconstruction error, refiner, prompt residual).",
        f"- Input: {geometry['height']} x {geometry['width']} px{' letterboxed' if geometry.get('letterbox') else ''}; "
        f"backbone {config['model']['backbone']['name']} (frozen, ImageNet weights).",
        f"- Network: {network_text(meta)}.",
        f"- Decision threshold: {meta.get('threshold_rule', 'calibrated on held-out training normals')}.",
        "",
        "## Validation (training images only: held-out normals + synthetic anomalies of unseen families)",
        "",
        "| rule | maps | image AUROC / pixel AUROC / AUPRO / pixel AP |",
        "|---|---|---|",
        f"| {'chosen' if category in validated else 'fallback: too few held-out normals to validate'} | {_rule_text(rule)} | "
        f"{_metrics_text(validated.get(category))} |",
    ]
    for name, label in (("network", "network's maps only"), ("statistics", "statistics only (no network)")):
        found = (restricted.get(name) or {}).get(category)
        if found:
            lines.append(f"| {label} | {_rule_text(found['rule'])} | {_metrics_text(found.get('metrics'))} |")
    adds = (selection.get("network_adds") or {}).get(category)
    if adds:
        lines += ["", f"What the network adds on validation: {adds['difference']:+.4f} of the selection score "
                      f"(mean of the four metrics) over statistics only, standard error {adds['standard_error']:.4f} "
                      "(paired bootstrap over the validation images)."]  # fmt: skip
    if test_metrics:
        lines += ["", "## Test split", "", _metrics_text(test_metrics) + " (image AUROC / pixel AUROC / AUPRO / pixel AP)"]
    return "\n".join(lines) + "\n"
