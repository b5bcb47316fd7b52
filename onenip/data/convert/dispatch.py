"""Which converter handles a format: ``FORMATS`` and ``convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onenip.data.convert.btad import convert_btad
from onenip.data.convert.elpv import convert_elpv
from onenip.data.convert.mvtec import convert_mvtec
from onenip.data.convert.plan import check_src_dir
from onenip.data.convert.report import ConversionReport
from onenip.data.convert.visa import convert_visa
from onenip.data.manifest import DatasetError

FORMATS: tuple[str, ...] = ("mvtec", "visa", "btad", "elpv")


def convert(format: str, src: str | Path | None, out: str | Path, **kwargs: Any) -> ConversionReport:  # noqa: A002
    """Convert ``src`` in ``format`` (one of ``FORMATS``) into the MVTec AD layout under ``out``.

    ``kwargs`` go to the converter (``categories``, ``overwrite``, ``progress``, and per format
    ``split_csv`` for VisA, ``test_every`` for ELPV). For ``elpv``, ``src`` may be ``None`` to use
    the installed ``elpv-dataset`` package.

    Example:
        >>> report = convert("btad", "~/data/BTAD", "data/industrial_btad")  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """
    name = str(format).strip().lower()
    if name not in FORMATS:
        msg = f"Unknown dataset format {format!r}; valid formats: {', '.join(FORMATS)}"
        raise DatasetError(msg)
    if name == "elpv":
        return convert_elpv(out, source=src, **kwargs)
    converters = {"mvtec": convert_mvtec, "visa": convert_visa, "btad": convert_btad}
    return converters[name](check_src_dir(src, name), out, **kwargs)

