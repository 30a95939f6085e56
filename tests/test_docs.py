"""Docs that cannot drift: every `cifar10 ...`, `python -m stages ...` and `dvc exp run ...` line of
the README and docs/ parses, and every -S key=value it gives exists and validates."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from pipeline.errors import ParamsError
from pipeline.params import ALL_KEYS, load_params
from stages.cli import app
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<[^>]+>")  # <its sha256>, <repo-url>: the reader fills them in
RECIPE = re.compile(r"\$\(cifar10 recipe ([a-z-]+)\)")  # $(cifar10 recipe cpu): the -S options it prints


def expand_recipes(line: str) -> str:
    """`$(cifar10 recipe NAME)` replaced by what the command prints; an unknown name fails."""
    from pipeline.recipes import RECIPES

    def options(match: re.Match[str]) -> str:
        assert match.group(1) in RECIPES, f"no recipe {match.group(1)}"
        return " ".join(RECIPES[match.group(1)].options())

    return RECIPE.sub(options, line)


def code_lines(text: str) -> Iterator[tuple[str, str | None, bool]]:
    """Lines of fenced code blocks (continuations joined) and inline code spans: each with the
    `error: ...` line that follows it in a block, where the docs show a command failing, and
    whether it is inline."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    for block in fenced:
        lines = block.replace("\\\n", " ").splitlines()
        for line, following in zip(lines, [*lines[1:], ""], strict=True):
            yield line, following.removeprefix("error: ") if following.startswith("error: ") else None, False
    without_blocks = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"`([^`\n]+)`", without_blocks.replace("\n", " ")):
        yield span, None, True


def commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, as words: comments dropped, `&&`, `;` and `|` split,
    leading VARIABLE=value assignments and a `$ ` prompt left out; each <placeholder> one word."""
    line = PLACEHOLDER.sub(
        lambda match: "<" + re.sub(r"\W+", "-", match.group(0)[1:-1]) + ">", expand_recipes(line)
    )
    try:
        words = shlex.split(line.strip().removeprefix("$ "), comments=True)
    except ValueError:  # not shell (prose in backticks)
        return
    current: list[str] = []
    for word in [*words, "&&"]:
        if word in ("&&", ";", "|", "||"):
            while current and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", current[0]):
                current.pop(0)
            if current:
                yield current
            current = []
        else:
            current.append(word)


def a_mention(words: list[str]) -> bool:
    """An inline span naming a command rather than giving one: `cifar10`, `cifar10 <stage>`,
    `dvc exp run -S`, `dvc exp run --temp -S ...`."""
    arguments = words[3:] if words[:2] in (["python", "-m"], ["dvc", "exp"]) else words[1:]
    return (
        not arguments
        or PLACEHOLDER.fullmatch(arguments[0]) is not None
        or "..." in words
        or words[-1] in ("-S", "--set", "-n")
    )


def documented() -> list[tuple[str, list[str], str | None]]:
    """(where, words, the error the docs show for it or None) for each command of the kinds tested."""
    found = []
    for page in PAGES:
        for line, error, inline in code_lines(page.read_text()):
            for words in commands(line):
                pipeline = words[0] == "cifar10" or words[:3] == ["python", "-m", "stages"]
                experiment = words[:3] == ["dvc", "exp", "run"]
                launched = words[0] == "torchrun" and "stages" in words  # torchrun ... -m stages train
                if (pipeline or experiment or launched) and not (inline and a_mention(words)):
                    found.append((f"{page.relative_to(REPO)}: {' '.join(words)}", words, error))
    return found


DOCUMENTED = documented()


def test_the_docs_show_commands_of_every_kind() -> None:
    kinds = {words[0] if words[0] != "python" else "python -m stages" for _, words, _ in DOCUMENTED}
    assert {"cifar10", "dvc", "torchrun"} <= kinds
    assert len(DOCUMENTED) >= 30


def assignments(words: list[str]) -> list[str]:
    """The values of -S/--set options (`-S k=v`, `--set k=v`, `--set=k=v`, `--set-param k=v`)."""
    values = []
    for index, word in enumerate(words):
        if word in ("-S", "--set", "--set-param") and index + 1 < len(words):
            values.append(words[index + 1])
        elif word.startswith(("--set=", "--set-param=")):
            values.append(word.split("=", 1)[1])
    return values


def check_assignments(values: list[str]) -> None:
    """Each key exists; each value (each of a sweep's comma-separated choices) validates."""
    for value in values:
        key, _, text = value.partition("=")
        if PLACEHOLDER.search(key):  # `train.augment.<your key>=...`: a key the reader adds
            continue
        assert key in ALL_KEYS or any(name.startswith(f"{key}.") for name in ALL_KEYS), f"unknown key {key}"
        if PLACEHOLDER.search(text):
            continue
        choices = text.split(",") if key not in ("data.url",) else [text]
        for choice in choices:
            try:
                load_params(REPO / "params.yaml", [f"{key}={choice}"])
            except ParamsError as error:
                pytest.fail(f"-S {key}={choice}: {error}")


@pytest.mark.parametrize(("where", "words", "error"), DOCUMENTED, ids=[where for where, _, _ in DOCUMENTED])
def test_a_documented_command_parses_and_its_values_validate(
    where: str, words: list[str], error: str | None
) -> None:
    if error is not None:  # the docs show it failing: it fails with exactly that line
        with pytest.raises(ParamsError) as raised:
            load_params(REPO / "params.yaml", assignments(words))
        assert str(raised.value) == error
        return
    if words[0] == "dvc":
        from dvc.cli import parse_args

        parse_args(words[1:])  # DVC's own parser: an unknown option exits
        check_assignments(assignments(words))
        return
    if words[0] == "torchrun":
        words = ["cifar10", *words[words.index("stages") + 1 :]]
    arguments = words[1:] if words[0] == "cifar10" else words[3:]
    group = typer.main.get_command(app)
    try:
        context = group.make_context("cifar10", list(arguments), resilient_parsing=False)
        if arguments and not arguments[0].startswith("-"):  # a stage command: parse its options too
            name, command, rest = group.resolve_command(context, list(arguments))  # type: ignore[attr-defined]
            assert command is not None, f"no command {name}"
            command.make_context(name, rest, parent=context)
    except typer.Exit as exit:  # --version, --help: they answer and exit, successfully
        assert exit.exit_code == 0
    check_assignments(assignments(words))


def test_the_docs_name_recipes_that_exist_and_use_them() -> None:
    text = "\n".join(page.read_text() for page in PAGES)
    used = set(RECIPE.findall(text))
    assert {"quick", "cpu"} <= used, used
    for name in used:
        expand_recipes(f"$(cifar10 recipe {name})")


def test_the_lock_file_pins_every_dependency_within_its_range() -> None:
    """requirements.lock: one exact version per package, each direct dependency's in the range
    pyproject.toml gives it."""
    import tomllib

    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, line
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


def readme_block(name: str) -> str:
    """The code block that follows `<!-- name -->` in the README."""
    text = (REPO / "README.md").read_text()
    return text[text.index(f"<!-- {name} -->") :].split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.dvc
@pytest.mark.long  # a sweep through DVC's queue: a minute on 2 cores
def test_the_readme_comparisons_work_in_a_fresh_clone_after_a_sweep(tmp_path: Path) -> None:
    """The README's comparison block, as written, right after a sweep in a fresh clone (no results
    committed; data.url a mirror set in each experiment), and its `dvc exp show` table fits 120
    columns."""
    from tests.conftest import make_tiny_archive
    from tests.test_dvc import columns, dvc, make_repository, run_the_queue, shell

    archive = make_tiny_archive(tmp_path / "mirror" / "cifar-10-binary.tar.gz")
    origin = make_repository(
        tmp_path / "origin", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "0" * 64
    )
    shell(origin, "git", "add", "-A")
    shell(origin, "git", "commit", "-qm", "the project")
    shell(tmp_path, "git", "clone", "-q", str(origin), "clone")
    clone = tmp_path / "clone"
    mirror = ["-S", f"data.url={archive.path.as_uri()}", "-S", f"data.sha256={archive.sha256}"]
    dvc(clone, "exp", "run", "--queue", *mirror, "-S", "train.seed=0,1")
    run_the_queue(clone, jobs=1)
    names = sorted(
        line.split()[0] for line in dvc(clone, "exp", "ls", "--name-only").splitlines() if line.strip()
    )
    assert len(names) == 2, names
    block = readme_block("compare").replace("<exp-a>", names[0]).replace("<exp-b>", names[1])
    for line in block.splitlines():
        command = shlex.split(line, comments=True)
        output = shell(clone, *command, env=columns(120), stderr=True)
        assert "failed to load" not in output and "ERROR" not in output, output
        if command[:3] == ["dvc", "exp", "show"]:
            assert "…" not in output and all(len(row) <= 120 for row in output.splitlines()), output
            assert all(name in output for name in names), output
    assert (clone / "dvc_plots" / "index.html").exists()
