"""A registered version's operating point as a running predictor reads it (MLflow bridge, kept apart
from ``onenip.registry`` so that the served pyfunc model does not import the whole registry module)."""

from __future__ import annotations

import logging
import threading
import time

from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)
THRESHOLD_TAG = "onenip.threshold"


def registered_threshold(client: MlflowClient, name: str, version: str) -> float | None:
    """The threshold set for a version with ``onenip threshold``; None: its trained one holds."""
    value = client.get_model_version(name, version).tags.get(THRESHOLD_TAG)
    return None if value is None else float(value)


class RegistryThreshold:
    """A served version's operating point, read from the registry at most every ``ttl`` seconds (a change
    with ``onenip threshold`` reaches a running server without a restart). If the registry cannot be
    read, the last value read holds (a prediction never fails for it)."""

    def __init__(self, name: str, version: str, ttl: float = 5.0, client: MlflowClient | None = None) -> None:
        self.name, self.version, self.ttl = name, version, ttl
        self.client = client or MlflowClient()
        self._value: float | None = None
        self._read_at = -float("inf")
        self._refreshing = threading.Event()

    @classmethod
    def from_uri(cls, uri: str, **kwargs: object) -> RegistryThreshold:
        """From a pinned ``models:/NAME/VERSION``."""
        name, _, version = uri.removeprefix("models:/").rpartition("/")
        return cls(name, version, **kwargs)  # type: ignore[arg-type]

    def __call__(self, category: str) -> float | None:
        """The current value; the first call reads the registry, later ones refresh it in the background
        (a slow tracking server never holds up a prediction)."""
        if self._read_at == -float("inf"):
            self._refresh()
        elif time.monotonic() - self._read_at >= self.ttl and not self._refreshing.is_set():
            self._refreshing.set()
            threading.Thread(target=self._refresh, name="threshold-refresh", daemon=True).start()
        return self._value

    def _refresh(self) -> None:
        try:
            self._value = registered_threshold(self.client, self.name, self.version)
        except Exception as error:  # noqa: BLE001 - the registry down, a malformed tag: keep the last value
            logger.warning("threshold of %s/%s not read from the registry (%s): keeping %s", self.name, self.version, error, self._value)
        finally:
            self._read_at = time.monotonic()
            self._refreshing.clear()
