"""Metric names live in one place, and the README's table lists every one of them."""

import math

from rlsweep import metrics as M
from tests.conftest import ROOT


def test_the_readme_lists_every_reported_metric():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Metrics"):readme.index("## How it works")]
    missing = sorted(name for name in M.REPORTED if f"`{name}`" not in table)
    assert not missing, f"metrics.py reports {missing}, which the README's Metrics table does not list"


def test_values_as_the_terminal_shows_them():
    assert [M.text(v) for v in (13312.0, 0.000312345, math.nan, 7, "x", 2.5e15)] == \
        ["13312", "0.0003123", "nan", "7", "x", "2.5e+15"]
