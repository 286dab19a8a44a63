"""A loopback OpenAI-compatible chat server for tests (stdlib only; `POST /v1/chat/completions`).

    from openai_server import OpenAIServer   # tests/ is on sys.path under pytest (no __init__.py, "prepend" mode)

    with OpenAIServer(["```python\\n...\\n```", "second completion"]) as server:
        backend = make_backend(... base_url=server.base_url ...)
        backend.complete(requests)
    server.requests   # the JSON bodies received, in arrival order (error answers included)
    server.headers    # their HTTP headers, names in lower case: server.headers[0]["authorization"]

`completions` is a list served in arrival order (a request after the last one gets HTTP 400), or a function
`body -> completion text` (called outside the server's lock, so it may sleep to simulate a slow model).
`statuses` scripts the first answers: `statuses=[500, 500]` answers the first two requests with HTTP 500 (an OpenAI
style error body), later ones normally. Error answers carry `retry-after-ms: retry_after_ms` so the client's retries
are fast; pass `retry_after_ms=None` to leave the client's own exponential backoff (~0.5 s, 1 s, 2 s ...).
`reject_seed=True` answers any request with a `seed` field HTTP 400 "... seed", like servers that do not support it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAIServer:
    """An OpenAI-compatible chat completions server on 127.0.0.1 (a free port), running in a thread while entered."""

    def __init__(
        self,
        completions: Sequence[str] | Callable[[dict[str, Any]], str],
        statuses: Sequence[int] = (),
        reject_seed: bool = False,
        retry_after_ms: int | None = 10,
    ) -> None:
        self.completions = completions
        self.statuses = list(statuses)
        self.reject_seed = reject_seed
        self.retry_after_ms = retry_after_ms
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # names in lower case
        self._served = 0
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.owner = self  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one request; records it."""
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            self.headers.append(headers)
            status = self.statuses[index] if index < len(self.statuses) else 200
            if status != 200:
                return status, _error(f"scripted HTTP {status}")
            if self.reject_seed and "seed" in body:
                return 400, _error("Unrecognized request argument supplied: seed")
            if not callable(self.completions):
                if self._served >= len(self.completions):
                    return 400, _error(f"OpenAIServer has no scripted completion left ({len(self.completions)} served)")
                text = self.completions[self._served]
                self._served += 1
        if callable(self.completions):
            text = self.completions(body)
        return 200, {
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_POST(self) -> None:
        owner: OpenAIServer = self.server.owner  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path.rstrip("/") == "/v1/chat/completions":
            status, answer = owner.answer(body, {k.lower(): v for k, v in self.headers.items()})
        else:
            status, answer = 404, _error(f"no route {self.path}")
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status != 200 and owner.retry_after_ms is not None:
            self.send_header("retry-after-ms", str(owner.retry_after_ms))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass
