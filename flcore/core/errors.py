"""The error every bad input raises, and the "did you mean" hint its messages carry."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and the fix.

    The command line turns it into exit code 2 and one line on stderr, before any data is
    loaded or any model trained.
    """


class MeanEquivalentWarning(UserWarning):
    """A robust aggregation rule whose parameters make it the plain mean (FedAvg) at this k:
    its numbers are FedAvg's, not the rule's (`Aggregator.equals_mean`)."""


def suggest(name, valid) -> str:
    """'; did you mean 'x'?' for the closest of `valid`, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
