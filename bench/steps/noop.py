"""A no-op handler step for chorus-bench: answers each subtask with its own input.

Pool mode (argument "pool"): one JSON request per line on stdin, one answer per line on stdout.
Call mode (no argument): one request on stdin, one answer on stdout. Standard library only.
"""

import json
import sys


def answer(request):
    return json.dumps({"output": request["subtask"]["input"]}, separators=(",", ":"))


def main():
    if sys.argv[1:] == ["pool"]:
        out = sys.stdout
        for line in sys.stdin:
            out.write(answer(json.loads(line)) + "\n")
            out.flush()
    else:
        sys.stdout.write(answer(json.load(sys.stdin)))


if __name__ == "__main__":
    main()
