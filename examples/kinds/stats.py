#!/usr/bin/env python3
"""Handler of csv-stats, pool mode: one request per line on stdin, one answer per line on
stdout. Computes count, sum, min and max of every numeric column of its chunk of rows.

Request: {"step": "handle", "subtask": {"input": {"file", "columns", "rows"}}, ...}
Answer:  {"output": {"<column>": {"count", "sum", "min", "max"}, ...}}
"""
import json
import sys


def number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


def stats(columns, rows):
    out = {}
    for i, column in enumerate(columns):
        values = [number(row[i]) for row in rows if i < len(row)]
        values = [v for v in values if v is not None]
        if values:
            out[column] = {"count": len(values), "sum": sum(values), "min": min(values), "max": max(values)}
    return out


for line in sys.stdin:
    chunk = json.loads(line)["subtask"]["input"]
    print(json.dumps({"output": stats(chunk["columns"], chunk["rows"])}), flush=True)
