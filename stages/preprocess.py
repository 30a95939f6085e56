"""`cifar10 preprocess`: archive -> data/prepared/{train,val,test}.safetensors and meta.json."""

from __future__ import annotations

import logging

from pipeline.data import prepare, write_prepared
from stages.common import (
    DEFAULT_PARAMS,
    Overrides,
    ParamsFile,
    StageRun,
    remove_orphans,
    run_as_script,
    say_how_to_record,
    stage_lock,
    user_errors,
)
from stages.paths import PREPARED, RAW_ARCHIVE

logger = logging.getLogger(__name__)


def command(params_file: ParamsFile = DEFAULT_PARAMS, overrides: Overrides = None) -> None:
    """Parse the archive into uint8 tensors, hold out a stratified validation split, compute mean/std
    (params `preprocess`)."""
    with user_errors():
        remove_orphans("preprocess")  # before anything can fail: see its docstring
        run = StageRun("preprocess", params_file, overrides)
        with stage_lock("preprocess"):
            run.begin()
            prepared = prepare(RAW_ARCHIVE, run.params.preprocess)
            with run.writing():  # data/prepared is replaced as a whole, or not at all
                write_prepared(PREPARED, prepared)
        counts = ", ".join(f"{name} {count}" for name, count in prepared.meta["counts"].items())
        logger.info("wrote %s: %s images", PREPARED, counts)
        say_how_to_record("preprocess")


if __name__ == "__main__":
    run_as_script(command)
