"""Settings merged over ``params.yaml``: ``--set section.key=value`` parsed into nested overrides, and the
section-by-section merge that profiles and overrides both use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


class ConfigError(ValueError):
    """``params.yaml`` is missing, not YAML, or does not match the schema."""


def parse_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "data.categories=[mono]"]`` -> nested overrides for ``load_params``. Values are
    read as YAML (``3`` is a number, ``[a, b]`` a list, ``null`` none), as ``dvc exp run -S`` reads them."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            msg = f"--set {assignment!r}: expected section.key=value, e.g. train.epochs=3"
            raise ConfigError(msg)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            msg = f"--set {assignment!r}: the value is not valid YAML"
            raise ConfigError(msg) from None
        node = overrides
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                msg = f"--set {assignment!r} conflicts with an earlier --set of {part!r}"
                raise ConfigError(msg)
        node[parts[-1]] = parsed
    return overrides


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, section by section (a new dict; neither is changed)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
