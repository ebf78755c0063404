"""Request size limits: a body over the limit gets 413 before any route sees it, and a request
line plus headers over the limit get 431 before they are even parsed.

The body limit is ASGI middleware. The head limit cannot be: uvicorn's default HTTP parser
(httptools) has no bound on the request head and buffers all of it before the app sees anything.
``HeadLimitedHttpToolsProtocol`` is that same protocol counting the bytes of a request head as they
arrive; ``python -m similarity_api serve`` runs uvicorn with it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from similarity_api.problems import problem

logger = logging.getLogger(__name__)


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head larger than ``max_head_bytes``.

    Bytes are counted while a message has begun and its headers are not complete, after each chunk
    is parsed, so the buffered head never exceeds the limit by more than one read. A chunk that
    completes one request and begins the next (pipelining) counts whole towards the next one.
    Pass it to uvicorn as ``functools.partial(HeadLimitedHttpToolsProtocol, max_head_bytes=N)``.
    """

    def __init__(self, *args: Any, max_head_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self._reading_head = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._reading_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._reading_head = False
            self._refuse_head()

    def _refuse_head(self) -> None:
        body = problem(
            431,
            "headers-too-large",
            f"the request line and headers are larger than {self.max_head_bytes} bytes",
            limit_bytes=self.max_head_bytes,
        ).body
        logger.warning("refused a request head over %d bytes", self.max_head_bytes)
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/problem+json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + bytes(body))
        self.transport.close()


class BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ASGIApp:
        return problem(
            413,
            "body-too-large",
            f"request body is larger than {self.max_bytes} bytes",
            title="Request body too large",
            limit_bytes=self.max_bytes,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        seen = 0
        started = False
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # The app may catch BodyTooLargeError (FastAPI turns any body-reading error into
                # a 400); drop its answer so the client gets the 413 below.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(BodyTooLargeError):
            await self.app(scope, limited_receive, tracking_send)
        if exceeded and not started:
            await self._too_large()(scope, receive, send)
