"""The file MLflow runs to build charlstm's pyfunc model (MLflow's "models from code"; see
``charlstm.serving``). It is copied into every logged model and run only when one is loaded."""

from mlflow.models import set_model

from charlstm.serving import CharlstmModel

set_model(CharlstmModel())
