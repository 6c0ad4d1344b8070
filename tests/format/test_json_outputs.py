"""Every JSON a command writes is strict JSON (issue 17): Python writes bare ``NaN`` and
``Infinity`` by default, which no other JSON reader accepts; ``json_text`` writes null."""

from __future__ import annotations

import json
import math

from doppelgen.format import json_text
from doppeltrain.run_log import RunLogger


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_text_writes_non_finite_numbers_as_null():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (2, {"d": float("nan")}), "e": "NaN"}
    assert strict(json_text(value)) == {"a": None, "b": [None, None, 1.5], "c": [2, {"d": None}], "e": "NaN"}
    assert json_text({"x": 1}, indent=2) == json.dumps({"x": 1}, indent=2)


def test_metrics_jsonl_stays_strict_when_a_value_is_not_finite(tmp_path):
    logger = RunLogger(tmp_path, active=True, start_epoch=0, start_step=0)
    try:
        logger.log({"split": "val", "step": 3, "epoch": 0, "recall_at_1": math.nan, "pairs_per_s": math.inf}, "val")
    finally:
        logger.close()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert strict(line) == {"split": "val", "step": 3, "epoch": 0, "recall_at_1": None, "pairs_per_s": None}
