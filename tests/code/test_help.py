"""Every job's ``--help`` tells the truth: each default it prints is the parser's own, printed once; a flag shows
no stored value as its default; the example command lines hold no runs of spaces."""

import argparse
import importlib
import pathlib
import re

import pytest

from tests.conftest import ROOT

JOBS = sorted(path.stem for path in (ROOT / "jobs").glob("*.py") if path.stem not in ("__init__", "runner"))
DEFAULT = re.compile(r"\(default: (.*?)\)(?=\s|$)")


def parsers(parser: argparse.ArgumentParser, name: str):
    """``(name, parser)`` for the job's parser and each sub-command's."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from parsers(sub, f"{name} {command}")


def help_blocks(parser: argparse.ArgumentParser) -> dict[argparse.Action, str]:
    """Each option's printed help, from its invocation to the next option's, on one line."""
    text = parser.format_help()
    formatter = parser._get_formatter()
    actions = [action for action in parser._actions
               if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction)]
    starts = []
    for action in actions:
        found = re.search(r"\n  " + re.escape(formatter._format_action_invocation(action)) + r"(\s|$)", text)
        assert found, f"{action.dest} is not in the help"
        starts.append(found.start())
    ends = [*sorted(starts)[1:], len(text)]
    end_of = dict(zip(sorted(starts), ends))
    return {action: " ".join(text[start:end_of[start]].split()) for action, start in zip(actions, starts)}


def every_parser():
    for job in JOBS:
        module = importlib.import_module(f"jobs.{job}")
        yield from parsers(module.build_parser(), job)


@pytest.fixture(autouse=True)
def wide_enough(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


@pytest.mark.parametrize("name, parser", list(every_parser()), ids=lambda value: value if isinstance(value, str)
                         else "")
def test_each_printed_default_is_the_parsers_own_printed_once(name, parser):
    wrong = []
    for action, block in help_blocks(parser).items():
        printed = DEFAULT.findall(block)
        if len(printed) > 1:
            wrong.append(f"{action.option_strings}: {len(printed)} defaults: {block}")
            continue
        shown = printed[0] if printed else None
        problem = default_problem(action, shown)
        if problem:
            wrong.append(f"{name} {'/'.join(action.option_strings) or action.dest}: {problem}: {block}")
    assert wrong == []


def default_problem(action: argparse.Action, shown: str | None) -> str | None:
    """What is wrong with the default ``shown`` for ``action``, or None."""
    default = action.default
    if isinstance(action, argparse.BooleanOptionalAction):
        in_effect = action.option_strings[0] if default else action.option_strings[-1]
        return None if shown == in_effect else f"shows {shown!r}, in effect is {in_effect}"
    if action.nargs == 0:  # a flag: what it stores is not what it does
        return f"a flag shows the stored value {shown}" if shown in ("True", "False", "None") else None
    if action.required or default in (None, [], ()):
        return f"shows {shown}" if shown in ("None", "[]", "()") else None
    if shown is None:
        return f"hides its default {default!r}"
    return None if str(default) in shown else f"shows {shown!r}, the parser's default is {default!r}"


@pytest.mark.parametrize("job", JOBS)
def test_example_command_lines_hold_no_runs_of_spaces(job):
    description = importlib.import_module(f"jobs.{job}").build_parser().description
    examples = [line for line in description.splitlines() if line.strip().startswith("python -m")]
    assert examples
    spaced = [line.strip() for line in examples for run in re.finditer(r"\S {3,}(\S)", line)
              if not aligned(run.start(1), line, examples)]
    assert spaced == []


def aligned(column: int, line: str, examples: list[str]) -> bool:
    """Whether text after a run of spaces starts where a word of another example line starts: a column."""
    return any(other is not line and len(other) > column and other[column] != " " and other[column - 1] == " "
               for other in examples)


def test_a_flag_and_a_pair_of_flags_print_what_they_do():
    from jobs.runner import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--no-report", dest="report", action="store_false", help="write no report")
    parser.add_argument("--views", action=argparse.BooleanOptionalAction, default=True, help="read both views")
    parser.add_argument("--path", default=str(pathlib.Path("/a/long-hyphenated-name/x")), help="where")
    blocks = {action.dest: block for action, block in help_blocks(parser).items()}
    assert blocks["report"] == "--no-report write no report"
    assert blocks["views"] == "--views, --no-views read both views (default: --views)"
    assert blocks["path"].endswith("(default: /a/long-hyphenated-name/x)")
