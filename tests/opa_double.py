"""A stand-in OPA server for the fault suite: OPA's data API for the placement decision, answered by the
same Rego on the in-process engine, and what its policy and data APIs show of a server running that
bundle, with a fault mode read from a file on every request.

Modes: ok (decide), fail (HTTP 500), the one fault the real OPA server cannot be made to give (its hang and
crash are tested on the real server).
Run: python -m tests.opa_double PORT MODE_FILE
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from services.shared.domain.policy import EmbeddedRegoEngine, PolicyBundle
from services.shared.settings import REPO_ROOT

DECISION_PATH = "/v1/data/sovereign/placement/decision"


def serve(port: int, mode_file: Path) -> None:
    bundle = PolicyBundle.load(REPO_ROOT / "policies")
    engine = EmbeddedRegoEngine(bundle)
    # What OPA's policy and data APIs show of a server running the bundle (placement checks it).
    served = {
        "/v1/policies": [
            {"id": path, "raw": text} for path, text in bundle.files.items() if path.endswith(".rego")
        ],
        **{f"/v1/data/{key}": document for key, document in bundle.data.items()},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self._failing() or self.path != DECISION_PATH:
                self.send_error(500, "injected failure")
                return
            self._answer(engine.evaluate(json.loads(body)["input"]))

        def do_GET(self) -> None:
            if self._failing() or self.path not in served:
                self.send_error(500, "injected failure")
                return
            self._answer(served[self.path])

        def _failing(self) -> bool:
            return mode_file.read_text().strip() == "fail"

        def _answer(self, result: object) -> None:
            answer = json.dumps({"result": result}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    # One thread: the Rego engine must stay on the thread that built it.
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
