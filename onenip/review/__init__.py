"""The review page (``onenip review``): operators judge logged predictions, leads apply their verdicts
to the data and set thresholds. FastAPI + Jinja2, no JavaScript build step."""
