"""anklumectl's shell completions and man page, made from its argparse parser.

Made at build time (the image builder calls ``write``; ``python -m
anklume_image.cli_docs DIR`` does it by hand), never committed: a new
subcommand or option is in them as soon as it is in the parser. bash and zsh
come from shtab, the man page from argparse-manpage; fish, which shtab does
not know, from the small walk of the parser below.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

# Where Debian's bash-completion, zsh, fish and man look for them.
INSTALLED = {
    "bash": "/usr/share/bash-completion/completions/anklumectl",
    "zsh": "/usr/share/zsh/vendor-completions/_anklumectl",
    "fish": "/usr/share/fish/vendor_completions.d/anklumectl.fish",
    "man": "/usr/share/man/man1/anklumectl.1",
}
FILE_METAVARS = ("FILE",)  # options whose value is a path: complete file names
FILE_DESTS = ("source",)


def anklumectl_parser() -> argparse.ArgumentParser:
    from anklumectl.main import parser

    p = parser()
    _mark_file_arguments(p)
    return p


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def commands(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every (sub)command: its words after the program name, parser, help."""
    sub = _subparsers(p)
    if sub is None:
        return
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, child in sub.choices.items():
        yield (*prefix, name), child, helps.get(name, "")
        yield from commands(child, (*prefix, name))


def options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _mark_file_arguments(p: argparse.ArgumentParser) -> None:
    """shtab completes a path only where told (its ``complete`` attribute)."""
    import shtab

    for parser in (p, *(child for _, child, _ in commands(p))):
        for action in parser._actions:
            if action.metavar in FILE_METAVARS or action.dest in FILE_DESTS:
                action.complete = shtab.FILE  # type: ignore[attr-defined]


def shtab_script(p: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    return str(shtab.complete(p, shell=shell))


def _fish_condition(words: tuple[str, ...], siblings: list[str]) -> str:
    """fish's test that the command line is at WORDS and no sibling follows yet."""
    tests = [f"__fish_seen_subcommand_from {shlex.quote(w)}" for w in words]
    if siblings:
        tests.append("not __fish_seen_subcommand_from " + " ".join(siblings))
    return "; and ".join(tests) if tests else "true"


def _fish_option(condition: str, action: argparse.Action) -> str:
    line = f"complete -c anklumectl -n {shlex.quote(condition)}"
    for flag in action.option_strings:
        line += f" -l {flag[2:]}" if flag.startswith("--") else f" -s {flag[1:]}"
    if action.choices:
        line += " -x -a " + shlex.quote(" ".join(str(c) for c in action.choices))
    elif action.nargs != 0:
        line += " -r" + (" -F" if getattr(action, "complete", None) else "")
    if action.help:
        line += " -d " + shlex.quote(action.help)
    return line


def fish(p: argparse.ArgumentParser) -> str:
    lines = ["# anklumectl: made from its argparse parser by anklume_image/cli_docs.py",
             "complete -c anklumectl -f"]
    levels: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = [((), p)]
    levels += [(words, child) for words, child, _ in commands(p)]
    for words, parser in levels:
        sub = _subparsers(parser)
        names = list(sub.choices) if sub else []
        at_this_level = _fish_condition(words, names)
        own = _fish_condition(words, []) if words else at_this_level
        lines += [_fish_option(own, action) for action in options(parser)]
        if any(getattr(a, "complete", None) for a in parser._actions if not a.option_strings):
            lines.append(f"complete -c anklumectl -n {shlex.quote(own)} -F")
        helps = {a.dest: a.help or "" for a in sub._choices_actions} if sub else {}
        lines += [f"complete -c anklumectl -n {shlex.quote(at_this_level)} -a {shlex.quote(n)}"
                  f" -d {shlex.quote(helps.get(n, ''))}" for n in names]
    return "\n".join(lines) + "\n"


def man(p: argparse.ArgumentParser, version: str) -> str:
    from argparse_manpage.manpage import Manpage

    return str(Manpage(p, _data={
        "project_name": "anklume Live", "version": version,
        "manual_title": "anklume Live manual", "manual_section": "1",
        "description": "status and control of anklume Live",
        "prog": "anklumectl",
    }))


def write(out_dir: Path) -> dict[str, Path]:
    """The four files under OUT_DIR, each at its installed path; returns them."""
    from anklumed import __version__

    p = anklumectl_parser()
    texts = {"bash": shtab_script(p, "bash"), "zsh": shtab_script(p, "zsh"), "fish": fish(p),
             "man": man(p, __version__)}
    written = {}
    for kind, text in texts.items():
        path = out_dir / INSTALLED[kind].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written[kind] = path
    return written


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m anklume_image.cli_docs OUT_DIR", file=sys.stderr)
        return 2
    for path in write(Path(args[0])).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
