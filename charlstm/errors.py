"""The one exception family the CLI turns into a single clear line and a non-zero exit."""


class CharlstmError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ConfigError(CharlstmError):
    """A config or study file is malformed, has unknown keys, wrong types or impossible values."""


class DataError(CharlstmError):
    """The corpus is missing, empty, binary or too short."""


class CheckpointError(CharlstmError):
    """A checkpoint is corrupt, missing, or does not fit the model / vocab it is used with."""


class TrackingError(CharlstmError):
    """The tracking or study storage cannot be reached or used."""
