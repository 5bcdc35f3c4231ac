"""anklumectl's completions and man page offer exactly what its parser has.

The expected words come from anklumectl's own parser; the generated files are
run by the real shells (bash, fish; zsh checks the syntax) and the man page is
rendered by groff, as a person would meet them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anklume_image import cli_docs, install
from anklume_image.cli_docs import INSTALLED

BASH_COMPLETE = r"""
source "$1"; shift
complete -p anklumectl
fn=$(complete -p anklumectl | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}
"$fn" anklumectl "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cli_docs.write(tmp_path_factory.mktemp("cli-docs"))


def parser() -> argparse.ArgumentParser:
    return cli_docs.anklumectl_parser()


def levels() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The command line at each (sub)command, and its parser."""
    p = parser()
    return [((), p), *((words, child) for words, child, _ in cli_docs.commands(p))]


def subcommands(p: argparse.ArgumentParser) -> set[str]:
    sub = cli_docs._subparsers(p)
    return set(sub.choices) if sub else set()


def long_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in cli_docs.options(p) for s in a.option_strings if s.startswith("--")}


def test_the_parser_has_nested_commands_to_check() -> None:
    words = {w for w, _ in levels()}
    assert ("update",) in words and ("data", "setup") in words


def bash_completes(made: dict[str, Path], *words: str) -> tuple[str, set[str]]:
    out = subprocess.run(["bash", "-c", BASH_COMPLETE, "bash", str(made["bash"]), *words],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    registration, *replies = out.splitlines()
    return registration, {r for r in replies if r}


@pytest.mark.parametrize("words", [w for w, p in levels() if subcommands(p)], ids=str)
def test_bash_offers_every_subcommand(made: dict[str, Path], words: tuple[str, ...]) -> None:
    registration, offered = bash_completes(made, "anklumectl", *words, "")
    assert registration.startswith("complete ") and registration.endswith(" anklumectl")
    assert offered == subcommands(dict(levels())[words])


@pytest.mark.parametrize("words", [w for w, p in levels() if long_options(p)], ids=str)
def test_bash_offers_every_option(made: dict[str, Path], words: tuple[str, ...]) -> None:
    _, offered = bash_completes(made, "anklumectl", *words, "--")
    assert long_options(dict(levels())[words]) <= offered


def test_bash_offers_the_choices_of_an_option(made: dict[str, Path]) -> None:
    _, offered = bash_completes(made, "anklumectl", "data", "setup", "--fs", "")
    assert offered == {"zfs", "btrfs"}


needs_fish = pytest.mark.skipif(shutil.which("fish") is None,
                                reason="fish is not installed (./setup-dev --tests)")


def fish_completes(made: dict[str, Path], line: str) -> set[str]:
    script = f"source {made['fish']}; complete -C {line!r}"
    out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return {row.split("\t")[0] for row in out.splitlines() if row}


@needs_fish
@pytest.mark.parametrize("words", [w for w, p in levels() if subcommands(p)], ids=str)
def test_fish_offers_every_subcommand(made: dict[str, Path], words: tuple[str, ...]) -> None:
    offered = fish_completes(made, " ".join(("anklumectl", *words, "")))
    assert offered == subcommands(dict(levels())[words])


@needs_fish
@pytest.mark.parametrize("words", [w for w, p in levels() if long_options(p)], ids=str)
def test_fish_offers_every_option(made: dict[str, Path], words: tuple[str, ...]) -> None:
    offered = fish_completes(made, " ".join(("anklumectl", *words, "--")))
    assert long_options(dict(levels())[words]) <= offered


@pytest.mark.skipif(shutil.which("zsh") is None,
                    reason="zsh is not installed (./setup-dev --tests)")
def test_zsh_completion_parses_and_names_every_command(made: dict[str, Path]) -> None:
    subprocess.run(["zsh", "-n", str(made["zsh"])], check=True, timeout=30)
    text = made["zsh"].read_text()
    assert text.startswith("#compdef anklumectl")
    for words, _ in levels()[1:]:
        assert re.search(rf"\b{re.escape(words[-1])}\b", text), words


def test_the_man_page_lists_every_command_and_option(made: dict[str, Path]) -> None:
    # ASCII, without bold or underline: hyphens and minus signs read as typed.
    text = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", str(made["man"])],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    for words, p in levels():
        if words:
            assert f"anklumectl {' '.join(words)}" in text, words
        for option in long_options(p):
            assert option in text, (words, option)


def test_the_image_installs_them_where_the_shells_look(tmp_path: Path) -> None:
    hooks = install.cli_docs_hooks(tmp_path)
    for kind, place in INSTALLED.items():
        made = tmp_path / place.lstrip("/")
        assert made.stat().st_size > 0, kind
        directory = str(Path(place).parent)
        # copy-in keeps the file's name: the made file's name is the installed one.
        assert f"copy-in {made} {directory}" in hooks, kind
        assert hooks.index(f'mkdir -p "$1"{directory}') < hooks.index(
            f"copy-in {made} {directory}")


def test_the_man_page_and_cli_md_list_every_exit_code(made: dict[str, Path]) -> None:
    from anklume_client.errors import ExitCode

    text = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", str(made["man"])],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    cli_md = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for code in ExitCode:
        assert re.search(rf"(^|\s){code.value} \w", text), code
        assert re.search(rf"(^|\s){code.value} \w", cli_md), code
