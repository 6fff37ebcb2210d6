"""The ways the README shows to read the results tables from a Python script exit cleanly, run as a user runs them,
many times: a script that reads a table into Arrow with deltalake's own filesystem aborts at exit now and then
(status 134), so the examples hand deltalake a pyarrow filesystem."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.pipeline.test_query_answers import commit_night

EXAMPLE = ROOT / "examples" / "read_results.py"
RUNS = 8
BARE_RUNS = 30  # the unsafe pattern aborted one bare run in ten here: 30 runs miss it about one time in 25


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A folder holding ``out/demo``, a committed results output, as after ``make demo``."""
    root = tmp_path_factory.mktemp("reading")
    commit_night(str(root / "out" / "demo"))
    return root


def run_script(path, cwd, *arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path), *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def exits(path, cwd, *arguments, runs: int = RUNS) -> list[int]:
    """The exit statuses of ``runs`` runs, each checked to have printed before it exited."""
    statuses = []
    for _ in range(runs):
        done = run_script(path, cwd, *arguments)
        assert done.stdout.strip(), done.stderr
        statuses.append(done.returncode)
    return statuses


def test_the_reading_example_prints_the_complete_rows_and_exits_cleanly_every_time(demo):
    done = run_script(EXAMPLE, demo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "1 runs, 1 prediction rows, 1 flagged"
    assert "/archive/a.dcm" in done.stdout
    assert exits(EXAMPLE, demo) == [0] * RUNS


def test_the_examples_reading_pattern_exits_cleanly_in_its_barest_form(demo, tmp_path):
    """Open a table, turn it into Arrow, exit at once: the shape in which the race showed most."""
    script = tmp_path / "bare.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(EXAMPLE.parent)!r})\nfrom read_results import "
                      f"table_rows\nprint(table_rows('out/demo', 'predictions').num_rows)\n")
    assert exits(script, demo, runs=BARE_RUNS) == [0] * BARE_RUNS


def readme_blocks() -> list[str]:
    """The README's Python examples that read the tables with deltalake."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [block for block in blocks if "deltalake" in block]


@pytest.mark.parametrize("block", readme_blocks())
def test_each_readme_reading_example_exits_cleanly_every_time(block, demo, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(block)
    assert exits(script, demo) == [0] * RUNS
