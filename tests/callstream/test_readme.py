"""The README's command reference and Quick start are what the commands take."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from callstream.cli import _parser

README = (Path(__file__).parent.parent.parent / "README.md").read_text()


def _block_after(heading: str) -> str:
    return README.split(heading, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


def _reference() -> list[list[str]]:
    """Each `callstream …` synopsis of the Command line block (continuation lines joined),
    its comment cut off."""
    commands: list[list[str]] = []
    for line in _block_after("## Command line").splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["callstream"]:
            commands.append(words[1:])
        elif words:
            commands[-1] += words
    return commands


def _subparser(path: list[str]) -> argparse.ArgumentParser:
    parser = _parser()
    for name in path:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("words", _reference(), ids=lambda words: " ".join(words[:2]))
def test_every_documented_option_exists(words: list[str]) -> None:
    path = [words[0], words[1].split("|")[0]] if len(words) > 1 else words
    parser = _subparser(path[:1])
    if len(path) == 2 and any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if path[1] in action.choices:
            parser = action.choices[path[1]]
    options = {o for a in parser._actions for o in a.option_strings}
    documented = {m for w in words for m in re.findall(r"--[a-z-]+", w)}
    assert documented <= options, documented - options


def test_every_command_is_documented() -> None:
    documented = {words[0] for words in _reference()}
    (action,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(action.choices) - {"bench"} <= documented


def test_the_quick_start_commands_parse_and_each_one_ends() -> None:
    after = re.split(r"In a second\s+terminal:", README, maxsplit=1)[1]
    block = after.split("```sh\n", 1)[1].split("```")[0]
    commands = [
        shlex.split(line.split("#", 1)[0])[1:]
        for line in block.splitlines()
        if line.startswith(".venv/bin/callstream")
    ]
    assert len(commands) >= 5
    for argv in commands:
        args = _parser().parse_args(argv)
        if args.command == "tail":  # it would follow for ever otherwise
            assert args.count is not None or args.to_end, argv
