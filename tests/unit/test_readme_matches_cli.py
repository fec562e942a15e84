"""README.md's "Command line" and "Layout" sections match the code.

The command list is compared with the parser behind `certrail --help` (run in-process, nothing
started): every line is ``certrail WORD... [--option]... ARG...  description`` (two or more spaces
before the description), a word may name alternatives (``fetch|start|stop``), a word after a command
that takes a fixed set of values names those values (``serve gateway|issuer|...``), an upper-case
word or ``<word>`` is a placeholder. Every command the README names must exist, every option it shows
must be one of that command's, and every command (leaf of the tree) must be named.

The layout is a list of paths (``a|b`` alternatives inside a segment, ``, `` between paths, a trailing
``/`` for a directory) each followed by its description. Every path it names must exist; every
top-level directory must be named, and so must every subdirectory of a directory whose
subdirectories it starts to list (``services/``: the service packages; ``tests/``: the suites).
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer.main

from services.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ALWAYS_SKIPPED = {"__pycache__"}


# -- reading README.md -------------------------------------------------------------------------------------

def section_block(markdown: str, heading: str) -> list[str]:
    """The lines of the first fenced block under ``## heading``."""
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert section, f"README.md has no '## {heading}' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, f"README.md's '## {heading}' section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def usage_of(line: str) -> str:
    """The part of a listing line before its description (two or more spaces)."""
    return re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]


# -- the command line -----------------------------------------------------------------------------------

def subcommands(command: Any) -> dict[str, Any]:
    return {name: sub for name, sub in (getattr(command, "commands", None) or {}).items() if not getattr(sub, "hidden", False)}


def option_names(command: Any) -> set[str]:
    params = command.get_params(command.context_class(command))
    return {name for p in params if p.param_type_name == "option" for name in (*p.opts, *p.secondary_opts)}


def value_choices(command: Any) -> set[str] | None:
    """The fixed values of the command's first argument that has them (``serve``'s service names):
    a click ``Choice``, or the enum typer builds one from."""
    for p in command.params:
        if p.param_type_name != "argument":
            continue
        choices = getattr(getattr(p, "type", None), "choices", None)
        annotation = getattr(getattr(p, "type_descriptor", None), "annotation", None)
        if choices is None and isinstance(annotation, type) and issubclass(annotation, Enum):
            choices = list(annotation)
        if choices:
            return {str(getattr(c, "value", c)) for c in choices}
    return None


def cli_leaves(command: Any, path: str = "certrail") -> set[str]:
    subs = subcommands(command)
    if not subs:
        return {path}
    return set().union(*(cli_leaves(sub, f"{path} {name}") for name, sub in subs.items()))


def is_placeholder(word: str) -> bool:
    return word.startswith("<") or word.strip(".").isupper()


def check_command_line(root: Any, line: str, named: set[str], errors: list[str]) -> None:
    """Walks one README line through the parser; adds the commands it names to ``named``."""
    words = usage_of(line).split()
    if not words or words[0] != "certrail":
        errors.append(f"a line that is not a certrail command: {line!r}")
        return
    nodes = [("certrail", root)]
    for word in words[1:]:
        if word.startswith("[") or word.startswith("-"):
            for option in (o for o in word.strip("[]").split("|") if o.startswith("-")):
                for path, command in nodes:
                    if option not in option_names(command):
                        errors.append(f"README lists `{path} {option}`: no such option")
            continue
        if is_placeholder(word):
            continue
        following = []
        for path, command in nodes:
            subs, choices = subcommands(command), value_choices(command)
            if subs:
                for name in word.split("|"):
                    if name in subs:
                        following.append((f"{path} {name}", subs[name]))
                    else:
                        errors.append(f"README lists `{path} {name}`: no such command")
            elif choices is not None:
                listed = set(word.split("|"))
                errors += [f"README lists `{path} {value}`: not one of its values" for value in sorted(listed - choices)]
                errors += [f"`{path} {value}` exists but README's `{path}` line omits it" for value in sorted(choices - listed)]
                following.append((path, command))
            else:
                errors.append(f"README lists `{path} {word}`: `{path}` takes no subcommand or fixed value")
        nodes = following
    named.update(path for path, _ in nodes)


def command_line_differences(lines: list[str], root: Any) -> list[str]:
    errors: list[str] = []
    named: set[str] = set()
    for line in lines:
        check_command_line(root, line, named, errors)
    real = cli_leaves(root)
    errors += [f"`{leaf}` exists but README's command line omits it" for leaf in sorted(real - named)]
    return errors


# -- the layout -------------------------------------------------------------------------------------------

def ignored_patterns() -> list[str]:
    lines = (ROOT / ".gitignore").read_text().splitlines() if (ROOT / ".gitignore").exists() else []
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith(("#", "!"))]


def project_dirs(directory: Path) -> set[str]:
    """Subdirectory names of ``directory`` that belong to the project (not hidden, not ignored by git)."""
    patterns = ignored_patterns()
    return {p.name for p in directory.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in ALWAYS_SKIPPED
            and not any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)}


def expand(spec: str) -> list[str]:
    """``services/gateway|issuer/`` -> ``services/gateway/``, ``services/issuer/``."""
    trailing = "/" if spec.endswith("/") else ""
    segments = [segment.split("|") for segment in spec.rstrip("/").split("/")]
    return ["/".join(combination) + trailing for combination in itertools.product(*segments)]


def layout_differences(lines: list[str], root: Path) -> list[str]:
    errors: list[str] = []
    listed: list[str] = []
    for line in lines:
        for spec in (s.strip() for s in usage_of(line).split(",") if s.strip()):
            listed += expand(spec)
    for path in listed:
        target = root / path.rstrip("/")
        exists = target.is_dir() if path.endswith("/") else target.is_file()
        if not exists:
            errors.append(f"README's layout lists {path}, which does not exist")
    children: dict[str, set[str]] = {"": set()}  # directory -> the subdirectories the README names in it
    for path in listed:
        parts = path.rstrip("/").split("/")
        is_dir = path.endswith("/")
        for depth in range(len(parts) if is_dir else len(parts) - 1):
            children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    for directory, named in sorted(children.items()):
        if not (root / directory).is_dir():
            continue
        errors += [f"{directory + '/' if directory else ''}{name}/ exists but README's layout omits it"
                   for name in sorted(project_dirs(root / directory) - named)]
    return errors


# -- the tests ------------------------------------------------------------------------------------------

def test_the_command_line_section_lists_every_command_and_nothing_else() -> None:
    lines = section_block(README.read_text(), "Command line")
    differences = command_line_differences(lines, typer.main.get_command(app))
    assert not differences, "README.md's command line and `certrail --help` differ:\n" + "\n".join(differences)


def test_the_layout_section_lists_every_directory_and_nothing_else() -> None:
    differences = layout_differences(section_block(README.read_text(), "Layout"), ROOT)
    assert not differences, "README.md's layout and the tree differ:\n" + "\n".join(differences)


# -- the checks themselves catch drift --------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    ("certrail kafka fetch|start|stop|status|launch   x", "README lists `certrail kafka launch`: no such command"),
    ("certrail up [--detach] [--bogus]   x", "README lists `certrail up --bogus`: no such option"),
    ("certrail serve gateway|issuer|deployer|auditor|relay   x", "README lists `certrail serve relay`: not one of its values"),
    ("certrail serve gateway|issuer   x", "`certrail serve deployer` exists but README's `certrail serve` line omits it"),
    ("certrail db current extra   x", "README lists `certrail db current extra`: `certrail db current` takes no subcommand"),
])
def test_a_wrong_command_line_is_named(line: str, expected: str) -> None:
    differences = command_line_differences([line], typer.main.get_command(app))
    assert any(d.startswith(expected) for d in differences), differences


def test_an_omitted_command_is_named_and_a_listed_group_does_not_cover_its_commands() -> None:
    differences = command_line_differences(["certrail kafka fetch|start|stop|status", "certrail emca-sim   x"],
                                           typer.main.get_command(app))
    assert "`certrail kafka acls apply` exists but README's command line omits it" in differences
    assert "`certrail emca-sim fault clear` exists but README's command line omits it" in differences
    assert "`certrail kafka fetch` exists but README's command line omits it" not in differences


def test_a_wrong_layout_is_named(tmp_path: Path) -> None:
    for directory in ("services/alpha", "services/beta", "services/__pycache__", "docs", "tools", ".hidden"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "tools" / "pom.xml").write_text("")
    lines = ["services/alpha|gamma/   one service each", "tools/pom.xml|build.xml   the broker's artifacts"]
    assert layout_differences(lines, tmp_path) == [
        "README's layout lists services/gamma/, which does not exist",
        "README's layout lists tools/build.xml, which does not exist",
        "docs/ exists but README's layout omits it",
        "services/beta/ exists but README's layout omits it",
    ]
