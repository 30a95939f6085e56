"""Training runs on tiny data: determinism, checkpoints, resume after signals, refusal of foreign state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

import pipeline.cores as cores
import pipeline.training as training
from pipeline.checkpoint import load_checkpoint
from pipeline.checkpoint_folder import Retention, checkpoint_path, prune_checkpoints
from pipeline.compile_cache import should_compile
from pipeline.data import load_meta, prepared_digest, preprocess
from pipeline.device import configure_device
from pipeline.errors import ModelFileError, PipelineError, TrainingInterrupted
from pipeline.lock import count_registered
from pipeline.params import Params, PreprocessParams, load_params, training_digest
from pipeline.source import code_digest
from pipeline.training import TrainOutcome, train
from tests.conftest import FAST_TRAINING, REPO, TinyArchive, set_params


@pytest.fixture
def prepared(tmp_path: Path, tiny_archive: TinyArchive) -> Path:
    folder = tmp_path / "prepared"
    preprocess(tiny_archive.path, PreprocessParams(val_size=20, seed=0), folder)
    return folder


def fast(*overrides: str) -> Params:
    return load_params(REPO / "params.yaml", [*FAST_TRAINING, "train.checkpoint_every=1", *overrides])


def run(params: Params, prepared: Path, checkpoints: Path, **options: Any) -> TrainOutcome:
    outcome = train(params.model, params.train, prepared, checkpoints, **options)
    assert outcome is not None
    return outcome


def own_checkpoint(params: Params, prepared: Path, checkpoints: Path) -> Path:
    """The checkpoint file of the run with these params and data."""
    digest = training_digest(params.model, params.train)
    code = code_digest(Path(training.__file__))  # what train() records when no code is named
    return checkpoint_path(checkpoints, digest, prepared_digest(load_meta(prepared)), code)


def interrupt_at(
    monkeypatch: pytest.MonkeyPatch, params: Params, prepared: Path, checkpoints: Path, step: int
) -> Path:
    """Run until SIGINT arrives at global step `step`; return the checkpoint it saved."""
    with monkeypatch.context() as patch:
        signal_at_step(patch, step, signal.SIGINT)
        with pytest.raises(TrainingInterrupted):
            run(params, prepared, checkpoints)
    path = own_checkpoint(params, prepared, checkpoints)
    assert path.exists()
    return path


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def signal_at_step(monkeypatch: pytest.MonkeyPatch, step: int, number: int = signal.SIGTERM) -> None:
    """Deliver a real signal to this process when training reaches global step `step` (1-based)."""
    original: Callable[..., dict[str, float]] = training.train_one_epoch
    steps_done = 0

    def counting(*args: Any, **kwargs: Any) -> dict[str, float]:
        setup, epoch, totals, start_step, should_stop, advance = args

        def advance_and_signal(amount: float) -> None:
            nonlocal steps_done
            advance(amount)
            if amount == 1:
                steps_done += 1
                if steps_done == step:
                    signal.raise_signal(number)

        return original(setup, epoch, totals, start_step, should_stop, advance_and_signal)

    monkeypatch.setattr(training, "train_one_epoch", counting)


def test_same_seed_gives_the_same_weights(prepared: Path, tmp_path: Path) -> None:
    first = run(fast(), prepared, tmp_path / "a")
    second = run(fast(), prepared, tmp_path / "b")
    assert_same_weights(first.state, second.state)
    other_seed = run(fast("train.seed=1"), prepared, tmp_path / "c")
    assert not torch.equal(first.state["fc.weight"], other_seed.state["fc.weight"])
    assert [row["epoch"] for row in first.history] == [1, 2]
    assert first.metrics["precision"] in ("bf16", "fp32") and first.metrics["device"] == "cpu"
    assert 0 <= first.metrics["val_accuracy"] <= 1 and first.card.arch == "resnet18"


@pytest.mark.usefixtures("all_cores")  # 2 threads on a worker's one core spin for the other
def test_a_resumed_run_takes_the_thread_count_it_was_checkpointed_with(
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    training_registry: Path,
) -> None:
    # The CPU's reductions split their work by thread (1 and 2 threads give other last bits), so
    # a run resumed while another training holds half the cores keeps the count it started with.
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    params = fast("train.epochs=3")
    with training.fixed_threads(1):  # the run sets its own count, and puts this one back at its end
        straight = run(params, prepared, tmp_path / "straight")
        assert straight.metrics["threads"] == 2 and torch.get_num_threads() == 1  # alone on 2 cores
        saved = interrupt_at(monkeypatch, params, prepared, tmp_path / "resumed", step=6)
        assert load_checkpoint(saved).threads == 2
        with cores.register_training(), caplog.at_level("INFO"):  # another training: a share of 1
            resumed = run(params, prepared, tmp_path / "resumed")
    assert "with the 2 thread(s) the run was checkpointed with (its share now: 1)" in caplog.text
    assert resumed.metrics["threads"] == 2
    assert_same_weights(straight.state, resumed.state)


def test_a_training_counts_among_the_running_ones_from_before_its_set_up(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training_registry: Path
) -> None:
    # trainings started together (a DVC queue's workers) must see each other when they take
    # their share of the cores, so each registers before its set-up (seconds on real data)
    counted: list[int] = []
    set_up = training._set_up

    def counting_set_up(*args: Any) -> Any:
        counted.append(count_registered(training_registry))
        return set_up(*args)

    monkeypatch.setattr(training, "_set_up", counting_set_up)
    run(fast("train.epochs=1"), prepared, tmp_path / "checkpoints")
    assert counted == [1] and count_registered(training_registry) == 0


@pytest.mark.parametrize(
    ("stop_step", "optimizer"),
    # mid-epoch, mid-epoch later, on an epoch boundary; Muon's momentum is state too
    [(2, "sgd"), (6, "sgd"), (8, "sgd"), (6, "muon")],
)
def test_interrupt_then_resume_is_bit_identical(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_step: int, optimizer: str
) -> None:
    # 4 steps an epoch; the weight average is state too
    params = fast("train.epochs=4", "train.ema=0.9", f"train.optimizer={optimizer}")
    straight = run(params, prepared, tmp_path / "straight")
    checkpoints = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        signal_at_step(patch, stop_step)
        with pytest.raises(TrainingInterrupted) as caught:
            run(params, prepared, checkpoints)
    assert caught.value.exit_code == 128 + signal.SIGTERM
    saved = load_checkpoint(own_checkpoint(params, prepared, checkpoints))
    assert saved.epoch * 4 + saved.step == stop_step
    resumed = run(params, prepared, checkpoints)
    assert_same_weights(straight.state, resumed.state)
    assert resumed.history == [
        {**row, "seconds": resumed.history[i]["seconds"]} for i, row in enumerate(straight.history)
    ]


def test_a_checkpoint_of_other_params_never_blocks_and_going_back_resumes_it(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = tmp_path / "checkpoints"
    first = interrupt_at(monkeypatch, fast(), prepared, checkpoints, 3)
    changed = fast("train.lr=0.1")
    with caplog.at_level("INFO", logger="pipeline.training"):
        other = run(changed, prepared, checkpoints)
    assert f"no checkpoint for these params in {checkpoints}; training from the start" in caplog.messages
    assert_same_weights(other.state, run(changed, prepared, tmp_path / "fresh").state)
    assert first.exists()  # kept: the earlier params may come back

    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.training"):
        resumed = run(fast("train.checkpoint_every=0", "train.device=auto"), prepared, checkpoints)
    assert f"resuming from {first} at epoch 1, step 3" in caplog.messages  # runtime keys may change
    assert_same_weights(resumed.state, run(fast(), prepared, tmp_path / "straight").state)
    assert resumed.checkpoint == first

    restarted = run(fast(), prepared, checkpoints, restart=True)  # --restart discards it
    assert_same_weights(restarted.state, resumed.state)


def test_a_checkpoint_of_other_training_code_is_named_not_resumed(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = tmp_path / "checkpoints"
    with monkeypatch.context() as patch:
        signal_at_step(patch, 3, signal.SIGINT)
        with pytest.raises(TrainingInterrupted):
            run(fast(), prepared, checkpoints, code_sha256="a" * 64)
    (saved,) = checkpoints.iterdir()
    with caplog.at_level("INFO", logger="pipeline.training"):
        run(fast(), prepared, checkpoints, code_sha256="b" * 64)
    assert (
        f"{saved} holds these params and data at epoch 1, step 3, but was trained by other code (code "
        "aaaaaaaa, this checkout's bbbbbbbb), so it is not resumed: check out that code to resume it "
        "(`cifar10 checkpoints` lists the code of each); training from the start"
    ) in caplog.messages
    assert load_checkpoint(saved).epoch == 0  # still there, for the code that wrote it


def test_the_code_digest_covers_exactly_the_code_train_runs(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    for package in ("pipeline", "stages"):
        shutil.copytree(REPO / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    entry = checkout / "stages" / "train.py"
    before = code_digest(entry, checkout)
    with (checkout / "pipeline" / "plots.py").open("a") as plots:  # not run by train
        plots.write("# a comment\n")
    assert code_digest(entry, checkout) == before
    for trained_by in ("pipeline/step.py", "stages/common.py"):
        with (checkout / trained_by).open("a") as source:
            source.write("# a comment\n")
        assert code_digest(entry, checkout) != before, trained_by
        before = code_digest(entry, checkout)


def test_short_tries_never_remove_a_long_runs_checkpoint(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints are bounded by size and age, not by count: a run interrupted after many epochs
    keeps its progress while several short tries of other params come and go."""
    checkpoints = tmp_path / "checkpoints"
    long_run = interrupt_at(monkeypatch, fast("train.epochs=4"), prepared, checkpoints, 12)
    os.utime(long_run, (1_000, time.time() - 3600))  # the oldest file of the folder
    plenty = Retention(max_bytes=10**12, max_age_seconds=86400)
    tries = []
    for lr in (0.1, 0.2, 0.3, 0.4):
        with monkeypatch.context() as patch:
            signal_at_step(patch, 1)
            with pytest.raises(TrainingInterrupted):
                run(fast(f"train.lr={lr}"), prepared, checkpoints, retention=plenty)
        tries.append(own_checkpoint(fast(f"train.lr={lr}"), prepared, checkpoints))
    assert sorted(checkpoints.iterdir()) == sorted([long_run, *tries])
    assert load_checkpoint(long_run).epoch == 3  # 12 steps of 4 an epoch: still at epoch 4


def test_checkpoints_beyond_the_size_or_age_limit_go_oldest_first(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    now = 1_000_000.0
    files = []
    for index, (size, age_hours) in enumerate([(300, 1), (200, 2), (100, 3), (100, 50)]):
        path = folder / f"run{index}.safetensors"
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age_hours * 3600, now - age_hours * 3600))
        files.append(path)
    current = files[0]
    removed = prune_checkpoints(current, Retention(max_bytes=10**6, max_age_seconds=48 * 3600), now=now)
    assert removed == [files[3]]  # older than two days
    removed = prune_checkpoints(current, Retention(max_bytes=550, max_age_seconds=48 * 3600), now=now)
    assert removed == [files[2]]  # 600 bytes > 550: the oldest goes
    files[1].touch()
    os.utime(files[1], (now - 7200, now - 7200))
    removed = prune_checkpoints(current, Retention(max_bytes=100, max_age_seconds=48 * 3600), now=now)
    assert removed == [files[1]] and sorted(folder.iterdir()) == [current]  # never the run's own


def test_data_from_other_preprocessing_starts_fresh(
    prepared: Path, tmp_path: Path, tiny_archive: TinyArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "checkpoints"
    first = interrupt_at(monkeypatch, fast(), prepared, checkpoints, 3)
    other = tmp_path / "other"
    preprocess(tiny_archive.path, PreprocessParams(val_size=30, seed=0), other)
    outcome = run(fast(), other, checkpoints)
    assert_same_weights(outcome.state, run(fast(), other, tmp_path / "fresh").state)
    assert first.exists() and outcome.checkpoint != first


def test_non_finite_loss_stops_training(prepared: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(PipelineError, match=r"NaN or infinite at epoch 1, step \d+"):
        run(fast("train.lr=1e30", "train.momentum=0.99"), prepared, checkpoints)
    assert not checkpoints.exists() or not list(checkpoints.iterdir())


def test_batch_larger_than_the_data_is_an_error(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="larger than the 80 training images"):
        run(fast("train.batch_size=100"), prepared, tmp_path / "checkpoints")


@pytest.mark.parametrize(
    ("where", "param"), [("step", "train.batch_size"), ("validation", "train.val_batch_size")]
)
def test_out_of_memory_names_the_batch_size_and_keeps_the_checkpoint(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, param: str
) -> None:
    checkpoints = tmp_path / "checkpoints"
    saved = interrupt_at(monkeypatch, fast(), prepared, checkpoints, 3)
    before = saved.read_bytes()

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training, "train_one_epoch" if where == "step" else "evaluate", out_of_memory)
    with pytest.raises(PipelineError) as caught:
        run(fast(), prepared, checkpoints)
    value = fast().train.batch_size if where == "step" else fast().train.val_batch_size
    assert str(caught.value) == (
        f"out of memory on cpu with {param}={value}; lower {param} (memory grows with the batch)"
    )
    assert saved.read_bytes() == before and list(checkpoints.iterdir()) == [saved]


def test_progress_is_reported_after_every_epoch_and_after_resuming(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: list[tuple[list[int], dict[str, Any]]] = []

    def report(history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        reports.append(([row["epoch"] for row in history], metrics))

    checkpoints = tmp_path / "checkpoints"
    params = fast("train.epochs=3")
    with monkeypatch.context() as patch:
        signal_at_step(patch, 6, signal.SIGINT)  # in epoch 2, after epoch 1 was reported
        with pytest.raises(TrainingInterrupted):
            run(params, prepared, checkpoints, report=report)
    outcome = run(params, prepared, checkpoints, report=report)
    assert [epochs for epochs, _ in reports] == [[1], [1], [1, 2], [1, 2, 3]]
    assert [metrics["epoch"] for _, metrics in reports] == [1, 1, 2, 3]
    assert reports[-1][1] == outcome.metrics and outcome.metrics["epochs"] == 3
    assert reports[0][1]["train_loss"] == outcome.history[0]["train_loss"]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "model file"])
def test_damaged_checkpoint_is_a_clear_error(prepared: Path, tmp_path: Path, damage: str) -> None:
    checkpoint = own_checkpoint(fast(), prepared, tmp_path / "checkpoints")
    checkpoint.parent.mkdir()
    if damage == "truncated":
        straight = tmp_path / "whole.safetensors"
        from pipeline.checkpoint import Checkpoint, capture_rng, save_checkpoint

        save_checkpoint(
            straight,
            Checkpoint(
                0,
                0,
                {},
                [],
                "p",
                "d",
                {"w": torch.ones(1000)},
                {"state": {}, "param_groups": []},
                None,
                capture_rng(),
            ),
        )
        checkpoint.write_bytes(straight.read_bytes()[:-500])
    elif damage == "random bytes":
        checkpoint.write_bytes(os.urandom(4096))
    else:
        from pipeline.model_card import ModelCard
        from pipeline.weights import save_model

        card = ModelCard("tutorial", 4, ["a"] * 10, [0.5] * 3, [0.2] * 3, True, "x", "2")
        save_model(checkpoint, {"w": torch.ones(3)}, card)
    with pytest.raises(ModelFileError, match=str(checkpoint)):
        run(fast(), prepared, checkpoint.parent)


def run_cli(
    project: Path, *arguments: str, script: str = "", env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[str]:
    """Start `python -m stages ...` in `project`, optionally after running `script` in the same process.

    Its thread count is pinned (as README says to repeat a run exactly), so that a training running
    elsewhere on the machine cannot change the weights the tests compare between processes."""
    code = textwrap.dedent(script) + "\nimport sys\nfrom stages.cli import app\napp(sys.argv[1:])\n"
    pinned = {"OMP_NUM_THREADS": str(cores.available_cores())}
    return subprocess.Popen(
        [sys.executable, "-c", code, *arguments],
        cwd=project,
        env={**pinned, **(env or os.environ), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture
def cli_project(tmp_path: Path, prepared: Path) -> Path:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    prepared.rename(project / "data" / "prepared")
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(project / "params.yaml", ["preprocess.val_size=20"])  # what `prepared` was made with
    return project


def settings(*extra: str) -> list[str]:
    return [f"--set={item}" for item in (*FAST_TRAINING, *extra)]


def uninterrupted_weights(cli_project: Path, tmp_path: Path, *overrides: str) -> dict[str, Tensor]:
    """The weights of the same run uninterrupted, trained in this process (a process of its own
    would add seconds of imports): same params, same thread count as `run_cli`'s."""
    outcome = run(fast(*overrides), cli_project / "data" / "prepared", tmp_path / "uninterrupted")
    return outcome.state


def assert_saved_weights_are(project: Path, expected: dict[str, Tensor]) -> None:
    saved = load_file(str(project / "models" / "model.safetensors"))
    assert saved.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), name  # bit for bit


def test_sigint_to_a_training_process_checkpoints_and_resume_matches(
    cli_project: Path, tmp_path: Path
) -> None:
    overrides = ("train.epochs=40", "model.arch=tutorial", "train.checkpoint_every=0")
    options = settings(*overrides)
    weights = uninterrupted_weights(cli_project, tmp_path, *overrides)

    process = run_cli(cli_project, "train", *options)
    assert process.stderr is not None
    for line in process.stderr:  # the first epoch has finished: 39 remain when the signal arrives
        if "epoch 1 " in line:
            # progress is on disk while training runs: what `dvc exp show` and `dvc plots show` read
            done = json.loads((cli_project / "metrics" / "train.json").read_text())["epoch"]
            rows = (cli_project / "metrics" / "train_log.tsv").read_text().splitlines()[1:]
            process.send_signal(signal.SIGINT)
            break
    assert 1 <= done < 40 and [row.split("\t")[0] for row in rows] == [
        str(epoch + 1) for epoch in range(done)
    ]
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, errors
    assert "interrupted by SIGINT" in errors and "Traceback" not in errors
    assert len(list((cli_project / "checkpoints").glob("*.safetensors"))) == 1
    assert not (cli_project / "models" / "model.safetensors").exists()

    resumed = run_cli(cli_project, "train", *options)
    _, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors
    assert "resuming from" in errors
    assert_saved_weights_are(cli_project, weights)
    assert list((cli_project / "checkpoints").iterdir()) == []


def test_kill_9_while_writing_a_checkpoint_keeps_the_previous_one(cli_project: Path, tmp_path: Path) -> None:
    overrides = ("train.epochs=4", "train.checkpoint_every=1")
    options = settings(*overrides)
    weights = uninterrupted_weights(cli_project, tmp_path, *overrides)

    killer = """
        import os, signal
        import pipeline.checkpoint as checkpoint
        from pipeline.files import atomic_file
        writes = 0
        def write_then_die(path, data):
            global writes
            writes += 1
            if writes < 3:
                return checkpoint_write(path, data)
            with atomic_file(path) as handle:  # the third checkpoint: half written, then SIGKILL
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint_write = checkpoint.write_bytes
        checkpoint.write_bytes = write_then_die
    """
    process = run_cli(cli_project, "train", *options, script=killer)
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    folder = cli_project / "checkpoints"
    assert len(list(folder.iterdir())) == 2  # the previous checkpoint and the half-written temporary
    (saved,) = folder.glob("*.safetensors")
    assert load_checkpoint(saved).epoch == 2

    resumed = run_cli(cli_project, "train", *options)
    _, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors
    assert_saved_weights_are(cli_project, weights)
    assert list(folder.iterdir()) == []


def test_compile_auto_follows_the_device_and_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    # on the CPU, `auto` follows the class's table (pipeline.hardware): AMX compiles ResNet-18,
    # AVX2 does not; the class is given, so the test does not depend on the machine running it
    monkeypatch.setattr("pipeline.compile_cache.shutil.which", lambda name: None)
    assert not should_compile("auto", cpu, "resnet18", "amx")
    monkeypatch.setattr("pipeline.compile_cache.shutil.which", lambda name: f"/usr/bin/{name}")
    assert should_compile("auto", cpu, "resnet18", "amx") and should_compile("auto", cuda)
    assert not should_compile("auto", cpu, "resnet18", "avx2")
    assert not should_compile("auto", mps)
    assert not should_compile(False, cuda) and should_compile(True, mps)


@pytest.mark.parametrize("benchmark", [True, False])
def test_cudnn_benchmark_is_set_from_params_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch, benchmark: bool
) -> None:
    # the flag is plain process state, settable without a GPU; undone after the test
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not benchmark)
    params = fast(f"train.cudnn_benchmark={str(benchmark).lower()}").train
    configure_device(torch.device("cpu"), params)
    assert torch.backends.cudnn.benchmark is (not benchmark)  # the CPU leaves cuDNN alone
    configure_device(torch.device("cuda"), params)
    assert torch.backends.cudnn.benchmark is benchmark


def test_compiled_training_saves_plain_weights_close_to_eager(prepared: Path, tmp_path: Path) -> None:
    # fp32 and a small lr, so that the kernels' different rounding is not amplified by training;
    # the tutorial net (BatchNorm, residual sums, a broadcast) compiles in less time than ResNet-18
    settings = ["train.epochs=1", "train.precision=fp32", "train.lr=0.001", "model.arch=tutorial"]
    eager = run(fast(*settings), prepared, tmp_path / "a")
    compiled = run(fast(*settings, "train.compile=true"), prepared, tmp_path / "b")
    assert compiled.state.keys() == eager.state.keys()  # no "_orig_mod." prefix from torch.compile
    # fp32 kernels sum in other orders: 1.4e-4 apart on an AVX2 CPU after one epoch, less on AVX-512
    assert compiled.metrics["train_loss"] == pytest.approx(eager.metrics["train_loss"], rel=5e-4)
    for name, tensor in eager.state.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(compiled.state[name], tensor, rtol=0, atol=1e-3)


def test_validation_every_few_epochs_and_always_after_the_last(prepared: Path, tmp_path: Path) -> None:
    outcome = run(fast("train.epochs=5", "train.val_every=2"), prepared, tmp_path / "checkpoints")
    scored = [row["epoch"] for row in outcome.history if row["val_acc"] is not None]
    assert scored == [2, 4, 5]
    assert outcome.metrics["val_accuracy"] == outcome.history[-1]["val_acc"]


def test_a_dvc_run_checkpoints_in_the_repository_and_any_workspace_resumes(
    cli_project: Path, tmp_path: Path
) -> None:
    """A queued experiment runs in a temporary copy that DVC deletes; DVC_ROOT names the repository,
    so its checkpoint lands there and a run in another workspace of the repository resumes it."""
    repository = tmp_path / "repository"
    dvc = {"DVC_ROOT": str(repository), "DVC_STAGE": "train", "DVC_EXP_NAME": "sweep-1"}
    options = settings("train.epochs=40", "model.arch=tutorial", "train.checkpoint_every=0")
    process = run_cli(cli_project, "train", *options, env={**os.environ, **dvc})
    assert process.stderr is not None
    for line in process.stderr:
        if "epoch 1 " in line:
            process.send_signal(signal.SIGINT)
            break
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, errors
    assert f"checkpoint saved to {repository / 'checkpoints'}/" in errors
    assert "run the same `dvc exp run` again" in errors and "cifar10 train" not in errors
    assert not (cli_project / "checkpoints").exists()

    other_workspace = tmp_path / "other"
    shutil.copytree(cli_project, other_workspace)
    resumed = run_cli(other_workspace, "train", *options, env={**os.environ, **dvc})
    _, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors
    assert f"resuming from {repository / 'checkpoints'}/" in errors
