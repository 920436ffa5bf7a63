#!/usr/bin/env python3
"""The HTTP endpoint of the word-count kind: `python3 server.py [PORT]` (default 8765) listens
on 127.0.0.1 and answers POST /count with the number of words of the subtask's input text.

Request: {"step": "handle", "subtask": {"input": "some text"}, ...}
Answer:  {"output": {"words": 2}}
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/count":
            status, answer = 404, {"error": f"no endpoint {self.path}"}
        else:
            text = json.loads(body)["subtask"]["input"]
            if isinstance(text, str):
                status, answer = 200, {"output": {"words": len(text.split())}}
            else:
                status, answer = 200, {"error": "each item must be a text"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening on 127.0.0.1:{port}", flush=True)
server.serve_forever()
