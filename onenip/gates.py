"""Metric gates: may a newly trained model replace the category's champion?

Pure logic (no MLflow): ``onenip.registry`` feeds it the new version's metrics and the champion's,
and moves aliases according to the ``GateDecision``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onenip.config import GateParams

if TYPE_CHECKING:
    from onenip.export_check import ExportCheck


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    """One line per check, passed or failed, in the order they were made."""
    failures: list[str] = field(default_factory=list)
    """The lines of ``reasons`` whose check failed (empty when passed)."""

    def summary(self) -> str:
        return ("PASSED" if self.passed else "FAILED") + ": " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "failures": list(self.failures)}


def _present(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def decide(
    metrics: dict[str, float | None],
    gates: GateParams,
    champion_metrics: dict[str, float | None] | None = None,
    *,
    has_masks: bool = True,
    export: ExportCheck | None = None,
) -> GateDecision:
    """Apply the absolute minima, the served graph's checks (``export``: parity with torch, the p50
    latency against ``gates.max_latency_ms``), then the no-regression rule against the champion (if any).

    Pixel metrics are only required where the category has masks; a required metric that is missing
    fails the gate (a model is never promoted on metrics nobody measured).
    """
    reasons: list[str] = []
    failures: list[str] = []

    def fail(reason: str) -> None:
        reasons.append(reason)
        failures.append(reason)

    for name, minimum in gates.minimum.items():
        if name.startswith("pixel_") and not has_masks:
            reasons.append(f"{name}: not measured (no masks), minimum {minimum:g} not applied")
            continue
        value = metrics.get(name)
        if not _present(value):
            fail(f"{name}: missing, minimum {minimum:g} required")
        elif value < minimum:  # type: ignore[operator]
            fail(f"{name} {value:.4f} < minimum {minimum:g}")
        else:
            reasons.append(f"{name} {value:.4f} >= minimum {minimum:g}")
    if export is not None:
        _served_graph(export, gates, reasons, fail)
    if champion_metrics is None:
        reasons.append("no champion yet: no-regression rule not applied")
        return GateDecision(not failures, reasons, failures)
    for name in gates.compare:
        new, old = metrics.get(name), champion_metrics.get(name)
        if not (_present(new) and _present(old)):
            continue
        if new < old - gates.max_regression:  # type: ignore[operator]
            fail(f"{name} {new:.4f} regresses from champion's {old:.4f} (tolerance {gates.max_regression:g})")
        else:
            reasons.append(f"{name} {new:.4f} vs champion's {old:.4f}: within tolerance {gates.max_regression:g}")
    return GateDecision(not failures, reasons, failures)


def _served_graph(export: ExportCheck, gates: GateParams, reasons: list[str], fail: Any) -> None:
    """The exported graph must agree with torch; the served p50 must be within ``max_latency_ms``."""
    if export.parity is False:
        fail(f"export parity: {export.describe()}")
    else:
        reasons.append(f"export parity: {export.describe()}")
    limit = gates.latency_limit(export.category)
    if limit is None:
        reasons.append(f"served p50 {export.p50_ms:.1f} ms ({export.runtime}, batch 1): no max_latency_ms set")
    elif export.p50_ms > limit:
        fail(f"served p50 {export.p50_ms:.1f} ms ({export.runtime}, batch 1) > max_latency_ms {limit:g}")
    else:
        reasons.append(f"served p50 {export.p50_ms:.1f} ms ({export.runtime}, batch 1) <= max_latency_ms {limit:g}")
