"""The decision rule that model selection and few-shot onboarding share: a trained component must earn
its place against the untrained alternative (the one-standard-error rule)."""

from __future__ import annotations

from collections.abc import Mapping


def trained_must_beat_untrained(
    difference: float, standard_error: float, margin_se: float, by_family: Mapping[str, float] | None = None,
) -> bool:
    """True when the trained candidate is kept: it leads the untrained one by MORE than ``margin_se``
    standard errors of the paired ``difference`` (trained minus untrained), and, when ``by_family`` is
    given (the same difference on each validation family alone), it is behind on none of them.
    A tie goes to the untrained candidate, also at ``margin_se`` 0 (the safe default wins ties)."""
    if not difference > margin_se * standard_error:
        return False
    return by_family is None or not by_family or min(by_family.values()) >= 0
