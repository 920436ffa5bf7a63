#!/usr/bin/env python3
"""Planner of csv-stats: reads the CSV files the task names (under data/ of this directory) and
splits their rows into chunks of `chunk_rows`, one subtask each, carrying the rows.

Request: {"step": "plan", "task": {"input": {"files": ["a.csv"], "chunk_rows": 2}, ...}}
Answer:  {"subtasks": [{"input": {"file", "columns", "rows"}}, ...]}
"""
import csv
import json
import os
import sys

DATA = os.path.realpath("data")


def refuse(message):
    print(json.dumps({"error": message}))
    sys.exit(0)


def main():
    task = json.load(sys.stdin)["task"]
    args = task["input"]
    files = args.get("files")
    if not isinstance(files, list) or not files:
        refuse("input.files: a non-empty list of CSV file names under data/")
    chunk = args.get("chunk_rows", 2)
    if not isinstance(chunk, int) or chunk < 1:
        refuse("input.chunk_rows: a positive integer")
    subtasks = []
    for name in files:
        path = os.path.realpath(os.path.join(DATA, str(name)))
        if not path.startswith(DATA + os.sep) or not os.path.isfile(path):
            refuse(f"input.files: no CSV file {name!r} under data/")
        with open(path, newline="") as f:
            reader = csv.reader(f)
            columns = next(reader)
            rows = list(reader)
        for start in range(0, len(rows), chunk):
            subtasks.append({"input": {"file": name, "columns": columns, "rows": rows[start:start + chunk]}})
    print(json.dumps({"subtasks": subtasks}))


main()
