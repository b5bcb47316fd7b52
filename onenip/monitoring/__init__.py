"""What happens to predictions on the line: the prediction log (``log``) with stored copies of the
images and heatmaps (``store``), the operators' verdicts, and drift checks over the logged traffic
(``drift``). SQLAlchemy only; no MLflow, no Prefect."""
