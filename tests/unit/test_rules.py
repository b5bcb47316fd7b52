"""The one rule model selection (refiner weight) and onboarding (trained head) share."""

from __future__ import annotations

import pytest

from onenip.rules import trained_must_beat_untrained


@pytest.mark.parametrize(
    ("difference", "error", "margin", "by_family", "kept"),
    [
        (0.030, 0.010, 2.0, None, True),  # 3 SE ahead of a 2 SE margin
        (0.020, 0.010, 2.0, None, False),  # exactly at the margin: not more than it
        (0.0, 0.010, 0.0, None, False),  # a tie at margin 0 goes to the untrained candidate
        (0.001, 0.010, 0.0, None, True),  # margin 0: any lead
        (-0.010, 0.010, 0.0, None, False),
        (0.030, 0.010, 1.0, {"warp": 0.02, "spot": -0.001}, False),  # behind on one family
        (0.030, 0.010, 1.0, {"warp": 0.02, "spot": 0.0}, True),
        (0.030, 0.010, 1.0, {}, True),
    ],
)
def test_trained_must_beat_untrained(difference: float, error: float, margin: float, by_family: dict | None, kept: bool) -> None:
    assert trained_must_beat_untrained(difference, error, margin, by_family) is kept


def test_selection_and_onboarding_both_use_it() -> None:
    import inspect

    from onenip import scoring_selection
    from onenip.fewshot import selection

    for module in (selection, scoring_selection):
        assert "trained_must_beat_untrained(" in inspect.getsource(module)
