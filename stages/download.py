"""`cifar10 download`: fetch data.url to data/raw/, verified against data.sha256."""

from __future__ import annotations

from pipeline.download import download
from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    run_as_script,
    stage_lock,
    user_errors,
)
from stages.paths import RAW_ARCHIVE


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Fetch the CIFAR-10 binary archive (https, http, file:// or a path) and verify its SHA-256
    (params `data`)."""
    with user_errors():
        run = StageRun("download", params_file, overrides)
        with stage_lock("download"):
            run.begin()
            with run.writing():  # the archive appears at its path only once its hash matches
                download(run.params.data, RAW_ARCHIVE)


if __name__ == "__main__":
    run_as_script(command)
