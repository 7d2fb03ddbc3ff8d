"""Loopback servers for alert tests: a webhook receiver (apprise ``json://``) and an SMTP server (aiosmtpd).

Both bind 127.0.0.1 on a free port, collect what arrives, and wait for it with a bounded timeout, so a
test that expects a message fails in seconds, never hangs. The webhook can go down in three ways (HTTP
500, connection reset, port closed) and come back on the same port, which is how a test sees a channel
fail and recover.

Use as context managers (``with WebhookServer() as hook: ...``) or through the fixtures in the tests.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
import time
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collector:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[Any]:
        """Wait until at least ``n`` items arrived; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.items) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {n} messages within {timeout}s, got {len(self.items)}: "
                                         f"{[self.describe(i) for i in self.items]}")
                self._cond.wait(left)
            return list(self.items)

    def describe(self, item: Any) -> str:
        return repr(item)[:200]


class WebhookServer(_Collector):
    """Collects apprise ``json://`` posts: ``posts`` is a list of dicts (title, message, attachments...).

    ``down("500")`` answers 500, ``down("reset")`` closes each connection without an answer,
    ``down("closed")`` stops listening (connection refused); ``up()`` serves again on the same port.
    """

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.mode = "up"
        self.requests = 0  # every request that reached the server, answered or not
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def posts(self) -> list[dict[str, Any]]:
        return list(self.items)

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def describe(self, item: Any) -> str:
        return str(item.get("title"))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                if owner.mode == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if owner.mode == "500":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.loads(data)
                payload["_path"] = self.path
                owner.add(payload)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> WebhookServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"webhook-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = self._thread = None

    def down(self, how: str = "500") -> None:
        assert how in ("500", "reset", "closed"), how
        self.mode = how
        if how == "closed":
            self.stop()

    def up(self) -> None:
        self.mode = "up"
        if self._server is None:
            self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SmtpServer(_Collector):
    """An aiosmtpd server on 127.0.0.1 with optional AUTH PLAIN/LOGIN (no TLS: loopback only).

    ``messages`` are parsed ``EmailMessage`` objects; ``envelopes`` keep sender and recipients.
    ``url(...)`` is the apprise ``mailto://`` URL that reaches it: plain ``mailto://`` (not
    ``mailtos://``) means no TLS, so apprise talks unencrypted SMTP to the host and port given.
    """

    def __init__(self, user: str = "ckpt", password: str = "s3cret") -> None:
        super().__init__()
        self.port = free_port()
        self.user, self.password = user, password
        self.envelopes: list[Any] = []
        self._controller: Any = None

    @property
    def messages(self) -> list[EmailMessage]:
        return list(self.items)

    def url(self, to: str = "oncall@example.com") -> str:
        return (f"mailto://{self.user}:{self.password}@127.0.0.1:{self.port}"
                f"?from=ckptwatch@example.com&to={to}")

    def describe(self, item: Any) -> str:
        return str(item["Subject"])

    def start(self) -> SmtpServer:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        owner = self

        class Handler:
            # aiosmtpd calls this hook by name
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                owner.envelopes.append(envelope)
                owner.add(email.message_from_bytes(envelope.content, policy=email.policy.default))
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login == owner.user.encode()
                  and auth_data.password == owner.password.encode())
            return AuthResult(success=ok)

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      authenticator=authenticate, auth_require_tls=False, ready_timeout=5)
        # aiosmtpd 1.4 logs a deprecation of its own Session.login_data on every AUTH: not ours to fix
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def body_text(msg: EmailMessage) -> str:
    """The text/plain body of an email as apprise sends it (multipart or not)."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None, "no text/plain part"
    return part.get_content().replace("\r\n", "\n")


def attachment_names(msg: EmailMessage) -> list[str]:
    return [p.get_filename() for p in msg.iter_attachments() if p.get_filename()]
