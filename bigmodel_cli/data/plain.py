"""The plain path: a switch that turns the speed machinery of preprocess off.

With `BIGMODEL_PLAIN=1` in the environment, Chinese is segmented by `jieba.lcut` itself
(no walk over jieba's internals, no jieba_next, no dictionary cache), in one process (no
worker pool, no read-ahead helper). Its outputs must equal the fast path's byte for byte:
it is the reference the fast path is checked against, in the tests and in CI.
"""

from __future__ import annotations

import os

PLAIN_ENV = "BIGMODEL_PLAIN"


def plain_path() -> bool:
    """Whether the plain path is asked for (the one place that reads the switch)."""
    return os.environ.get(PLAIN_ENV, "").strip() not in ("", "0")
