"""onenip: industrial visual anomaly detection with one normal image prompt (OneNIP)."""

from onenip.env import configure_offline_env

configure_offline_env()

__version__ = "0.1.0"
