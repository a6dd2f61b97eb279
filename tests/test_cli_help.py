"""Every subcommand's --help: each option says what it does, on/off flags show no "(default: True)", and no
option names its default twice."""
from __future__ import annotations

import argparse

import pytest

from edgeseg.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


COMMANDS = dict(_subparsers(build_parser()))


def test_every_subcommand_is_walked():
    assert {"train", "eval", "export", "run", "bench", "demo", "kernels build"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_text_of_every_option(name, capsys):
    parser = COMMANDS[name]
    fmt = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"edgeseg {name} {flag}: no help text"
        text = fmt._expand_help(action)
        assert text.lower().count("default") <= 1, f"edgeseg {name} {flag}: default named twice: {text!r}"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            assert "(default:" not in text, f"edgeseg {name} {flag}: an on/off flag shows its default: {text!r}"
    with pytest.raises(SystemExit) as e:  # and --help itself prints and exits 0
        main([*name.split(), "--help"])
    assert e.value.code == 0 and "usage: edgeseg" in capsys.readouterr().out


def test_help_shows_useful_defaults():
    train = COMMANDS["train"]
    text = {a.dest: train._get_formatter()._expand_help(a) for a in train._actions if a.help}
    assert "(default: 100)" in text["epochs"] and "(default: 0.001)" in text["lr"] and "256x320" in text["crop"]
    assert "(default: 0)" in text["seed"] and "(default: adamw)" in text["optimizer"]
