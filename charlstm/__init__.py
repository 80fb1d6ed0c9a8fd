"""charlstm: character-level LSTM language models, sized by Optuna and tracked in MLflow."""

__version__ = "0.1.0"
