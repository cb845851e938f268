"""The fuzz pass runs last: it creates, fills and deletes collections and policies of the shared platform, which
the other tests of the session (tests/pipeline) must not see."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Per service: the operations fuzzed, requests sent, 2xx and 5xx answers, failed examples, seconds spent, the
# positive (schema-valid) examples and how many were answered 2xx and 4xx (a valid example refused says the
# document is looser than validation), and answers by operation and status (shown with -v).
STATS: dict[str, dict] = defaultdict(lambda: {"operations": set(), "examples": 0, "2xx": 0, "5xx": 0, "failures": 0,
                                              "too_long": 0, "seconds": 0.0,
                                              "positive": 0, "positive_2xx": 0, "positive_4xx": 0,
                                              "statuses": Counter(), "positive_statuses": Counter()})


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: HERE in Path(str(item.path)).resolve().parents)  # stable: order kept otherwise


def pytest_terminal_summary(terminalreporter):
    for service, stats in sorted(STATS.items()):
        terminalreporter.write_line(
            f"fuzz {service}: {len(stats['operations'])} operations, {stats['examples']} requests, "
            f"{stats['2xx']} 2xx, {stats['5xx']} 5xx, {stats['failures']} failed examples, "
            f"{stats['too_long']} URLs too long for the HTTP parser, {stats['seconds']:.0f} s")
        positive = stats["positive"]
        share = f" ({100 * stats['positive_2xx'] / positive:.0f}% 2xx)" if positive else ""
        terminalreporter.write_line(
            f"fuzz {service}: {positive} positive examples, {stats['positive_2xx']} 2xx, "
            f"{stats['positive_4xx']} 4xx{share}")
        if terminalreporter.verbosity > 0:
            for key, count in sorted(stats["statuses"].items()):
                terminalreporter.write_line(f"    {key}: {count}")
            for key, count in sorted(stats["positive_statuses"].items()):
                terminalreporter.write_line(f"    positive {key}: {count}")
