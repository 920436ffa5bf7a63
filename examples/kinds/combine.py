#!/usr/bin/env python3
"""Synthesis of csv-stats: combines the chunks' statistics exactly (counts and sums add up,
min of mins, max of maxes) and derives each column's mean from its total sum and count.

Request: {"step": "synthesize", "outputs": [{"id", "output"}, ...], "failures": [...], ...}
Answer:  {"output": {"<column>": {"count", "sum", "min", "max", "mean"}, ...}}
"""
import json
import sys

request = json.load(sys.stdin)
total = {}
for item in request["outputs"]:
    for column, s in item["output"].items():
        t = total.setdefault(column, {"count": 0, "sum": 0, "min": s["min"], "max": s["max"]})
        t["count"] += s["count"]
        t["sum"] += s["sum"]
        t["min"] = min(t["min"], s["min"])
        t["max"] = max(t["max"], s["max"])
for t in total.values():
    t["mean"] = t["sum"] / t["count"]
print(json.dumps({"output": total}))
