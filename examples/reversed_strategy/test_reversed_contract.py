"""The ``reversed`` strategy against gearshift's conformance kit: the whole strategy contract,
over real sockets. Run ``python -m pytest`` here (gearshift's own suite runs it too).

The class is named directly, so the test runs whether or not this plugin is installed; once it
is, ``strategy = "reversed"`` tests it as users get it, through its entry point.
"""

from __future__ import annotations

from gearshift_reversed import ReversedStrategy

from gearshift.testing import StrategyContract


class TestReversed(StrategyContract):
    strategy = ReversedStrategy
    options = {"log_every": 2}
