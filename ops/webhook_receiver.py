"""A webhook endpoint on 127.0.0.1 that verifies every delivery with the reference library of the Standard
Webhooks specification (`standardwebhooks`), never with genq's code, and can play an outage.

Used by the chaos suite and the webhook tests:

    with VerifyingReceiver({"current": Webhook(secret)}) as receiver:
        settings = settings.model_copy(update={"webhook_url": receiver.url})
        ...
        receiver.black_hole_for(30.0)   # connections accepted, never answered, for 30 s
        receiver.status = 503           # or: every delivery answered 503 until set back to None

Each delivery is answered 204 when every verifier accepts it, 400 when one refuses (recorded in `refused`),
`status` while that is set, and nothing at all while black-holing (the connection is held, then closed).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

#: A black-holed connection is held at most this long (the sender's own timeout is far shorter).
HOLD_MAX_S = 60.0


class VerifyingReceiver:
    def __init__(self, verifiers: dict[str, Webhook]) -> None:
        self.verifiers = verifiers
        self.status: int | None = None
        self.accepted: list[dict[str, Any]] = []  # each verified delivery's event, in arrival order
        self.refused: list[str] = []  # "verifier name: reason" per delivery a verifier refused
        self.seen: list[tuple[dict[str, str], bytes]] = []  # every request's headers and body, answered or not
        self._black_hole_until = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [str(event["id"]) for event in self.accepted]

    def black_hole_for(self, seconds: float) -> None:
        """From now on, for `seconds`, accept connections and never answer them."""
        self._black_hole_until = time.monotonic() + seconds

    def __enter__(self) -> VerifyingReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._black_hole_until = 0.0  # held connections end at their next check
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _answer(self, headers: dict[str, str], body: bytes) -> int | None:
        """The status to answer with, or None to hold the connection and close it unanswered."""
        with self._lock:
            self.seen.append((headers, body))
        hold_until = min(self._black_hole_until, time.monotonic() + HOLD_MAX_S)
        if time.monotonic() < hold_until:
            while time.monotonic() < min(self._black_hole_until, hold_until):
                time.sleep(0.1)
            return None
        if self.status is not None:
            return self.status
        for name, verifier in self.verifiers.items():
            try:
                verifier.verify(body, headers)
            except WebhookVerificationError as exc:
                with self._lock:
                    self.refused.append(f"{name}: {exc}")
                return 400
        with self._lock:
            self.accepted.append(json.loads(body))
        return 204

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                # The verifier reads header names in lower case, as HTTP/1.1 makes them case-insensitive.
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._answer(headers, body)
                if status is None:
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:  # quiet: the tests and the chaos report say what matters
                pass

        return Handler
