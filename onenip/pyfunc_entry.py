"""MLflow "models from code" entry point: the logged model is this file plus the weights artifact, so
loading it unpickles nothing (``mlflow.pyfunc.log_model(python_model=<this path>)``)."""

import mlflow

from onenip.pyfunc import OneNIPPyfunc

mlflow.models.set_model(OneNIPPyfunc())
