"""Where each stage reads and writes, relative to the repository root (where DVC runs commands).

dvc.yaml declares the same paths as deps and outs, except the run state below (checkpoints and
locks), which is git-ignored and which DVC neither caches nor removes.
"""

import os
from pathlib import Path

RAW_ARCHIVE = Path("data/raw/cifar-10-binary.tar.gz")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.safetensors")
TRAIN_METRICS = Path("metrics/train.json")  # the model's figures: what `dvc exp show` lists
TRAIN_LOG = Path("metrics/train_log.tsv")
TRAIN_DETAILS = Path("reports/train.json")  # timing, device, precision: versioned, not a metric
EVAL_METRICS = Path("metrics/eval.json")
EVAL_DETAILS = Path("reports/eval.json")  # per class, intervals, images, precision, seconds
CONFUSION = Path("metrics/confusion.csv")
PLOTS = Path("plots")  # PNG pictures of the run, written by `cifar10 plots`
LOCKS = Path(".cifar10")  # one lock file per stage: one run of a stage at a time in this workspace
PICTURES = tuple(
    PLOTS / name for name in ("learning_curves.png", "confusion_matrix.png", "confident_mistakes.png")
)

# What each stage writes: dvc.yaml's outs, metrics and plots of the stage (a test keeps them equal).
OUTPUTS: dict[str, tuple[Path, ...]] = {
    "download": (RAW_ARCHIVE,),
    "preprocess": (PREPARED,),
    "train": (MODEL, TRAIN_DETAILS, TRAIN_METRICS, TRAIN_LOG),
    "evaluate": (EVAL_DETAILS, EVAL_METRICS, CONFUSION),
    "plots": PICTURES,
}

# The metrics file of each stage that has one. When an earlier stage replaces its outputs, it leaves
# `{}` here rather than no file: for a missing one `dvc exp show` would show the figures dvc.lock
# names, from DVC's cache, those of the outputs just removed.
METRICS: dict[str, Path] = {"train": TRAIN_METRICS, "evaluate": EVAL_METRICS}

CHECKPOINTS_VARIABLE = "CIFAR10_CHECKPOINTS"


def checkpoints_folder() -> Path:
    """Where interrupted runs keep their state: one file per run (params, data and code).

    $CIFAR10_CHECKPOINTS when set (a folder shared by several machines, say); else the
    checkpoints/ folder of the repository DVC runs the stage for: DVC sets DVC_ROOT to the
    repository's root, also for queued and --temp experiments in their temporary copies, so every
    workspace of the repository finds the same checkpoints; else ./checkpoints.
    """
    if os.environ.get(CHECKPOINTS_VARIABLE):
        return Path(os.environ[CHECKPOINTS_VARIABLE])
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]) / "checkpoints"
    return Path("checkpoints")


MAX_GB_VARIABLE = "CIFAR10_CHECKPOINTS_MAX_GB"  # default 5: the folder's size limit
MAX_DAYS_VARIABLE = "CIFAR10_CHECKPOINTS_MAX_DAYS"  # default 30: older checkpoints are removed


def checkpoint_limits() -> tuple[float, float]:
    """(gigabytes, days) the checkpoint folder keeps; changeable without touching params."""
    return float(os.environ.get(MAX_GB_VARIABLE) or 5), float(os.environ.get(MAX_DAYS_VARIABLE) or 30)
