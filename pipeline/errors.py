"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`."""


class PipelineError(Exception):
    """A problem with the user's input or environment, not a bug: bad params, bad archive, missing files."""

    exit_code = 1


class ParamsError(PipelineError):
    """Invalid params.yaml or -S override. Exit code 2, like a usage error."""

    exit_code = 2


class DownloadError(PipelineError):
    """The archive could not be fetched or does not match its expected hash."""


class ArchiveError(PipelineError):
    """The archive is not the official CIFAR-10 binary layout."""


class ModelFileError(PipelineError):
    """Weights or checkpoint files that are missing, truncated or written for another model."""


class TrainingInterrupted(PipelineError):
    """Training stopped by a signal after saving a checkpoint; exit code 128 + signal number."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite; nothing was written."""
