"""Prefect orchestration of the onenip library (flows and deployments only; no model code here)."""
