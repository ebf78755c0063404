"""Request size limits: a body over the limit gets 413 before any route sees it, and a request
line plus headers over the limit get 431 before the request reaches the app, however its bytes
arrive.

The body limit is ASGI middleware. The head limit cannot be: uvicorn's default HTTP parser
(httptools) has no bound on the request head and buffers all of it before the app sees anything.
``HeadLimitedHttpToolsProtocol`` is that same protocol counting the bytes of each request head as
the parser reads them; ``python -m similarity_api serve`` runs uvicorn with it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
from asyncio import TimerHandle
from typing import Any

import httptools
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from similarity_api.problems import problem

logger = logging.getLogger(__name__)

#: After a 431 the connection stays half-open this long, or until this many more bytes arrive,
#: discarding them: closing with the rest of a request unread makes the kernel send a reset that
#: can destroy the 431 before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

_EMPTY_LINES = re.compile(rb"[\r\n]+")


class _Phase(enum.Enum):
    IDLE = "between requests"
    HEAD = "reading a request head"
    BODY = "reading a request body"


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 to a request head over ``max_head_bytes``.

    The head is the request line, the header lines and the empty line that ends them, in bytes as
    sent; a body never counts. httptools reports no positions, so the count cannot be taken from
    whole reads: one read may hold a whole head, its body and the next request. Each read is fed to
    the parser in pieces instead, cut wherever a head or a request can end: outside a body after
    each CRLF CRLF (llhttp ends a head only there, and the first one after the start of a request
    ends its head), in a chunked body likewise (its last chunk ends with one), in a Content-Length
    body at its last byte. The empty lines a client may send before a request are a piece of their
    own. So a request begins at the start of a piece and its head ends at the end of one, and its
    head bytes are exactly the pieces parsed from ``on_message_begin`` up to
    ``on_headers_complete``, which refuses the request before uvicorn dispatches it. A piece of a
    head is also cut at one byte past the limit, so an unfinished head is refused as soon as it
    passes the limit and is never buffered beyond it. The result does not depend on how the bytes
    were split into reads. A usual request is one piece, or two with a body.

    A refused request is answered after the responses to the requests pipelined before it (HTTP/1.1
    answers in order); then the connection is half-closed, and closed once the client stops sending
    (see ``LINGER_SECONDS``).
    Pass it to uvicorn as ``functools.partial(HeadLimitedHttpToolsProtocol, max_head_bytes=N)``.
    """

    def __init__(self, *args: Any, max_head_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self._phase = _Phase.IDLE
        self._head_bytes = 0  # of the current head, in the pieces parsed before this one
        self._piece_bytes = 0  # of the piece being parsed
        self._body_left: int | None = None  # of a Content-Length body; None when chunked
        self._tail = b""  # the last 3 bytes parsed, for a CRLF CRLF split between reads
        self._refused = False
        self._discarded = 0
        self._linger: TimerHandle | None = None

    # --- feeding the parser ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        view = memoryview(data)
        start = 0
        while start < len(data) and not self._refused and not self.transport.is_closing():
            end = self._piece_end(data, start)
            self._piece_bytes = end - start
            phase = self._phase
            if not self._feed(view[start:end]):
                return
            self._tail = (self._tail + data[max(start, end - 3) : end])[-3:]
            start = end
            if phase is _Phase.BODY:
                if self._body_left is not None:
                    self._body_left -= self._piece_bytes
            elif self._phase is _Phase.HEAD:  # the head goes on past this piece
                self._head_bytes += self._piece_bytes
                if self._head_bytes > self.max_head_bytes:
                    self._refuse()

    def _piece_end(self, data: bytes, start: int) -> int:
        """Where the piece starting at ``start`` ends: where a head or a request can end.

        Cutting more often than needed is harmless; missing a place would not be."""
        if self._phase is _Phase.BODY and self._body_left:
            return min(len(data), start + self._body_left)
        stop = len(data)
        if self._phase is _Phase.IDLE:
            empty = _EMPTY_LINES.match(data, start)
            if empty:  # empty lines before a request: llhttp skips them, they never count
                return empty.end()
            stop = min(stop, start + self.max_head_bytes + 1)
        elif self._phase is _Phase.HEAD:
            stop = min(stop, start + self.max_head_bytes - self._head_bytes + 1)
        # A CRLF CRLF that began in the bytes already parsed ends 1, 2 or 3 bytes into this piece.
        for within in range(max(1, 4 - len(self._tail)), min(3, stop - start) + 1):
            if self._tail[within - 4 :] + data[start : start + within] == b"\r\n\r\n":
                return start + within
        blank = data.find(b"\r\n\r\n", start, stop)
        return stop if blank < 0 else blank + 4

    def _feed(self, piece: memoryview) -> bool:
        """uvicorn's ``data_received`` (0.55) for one piece; False once parsing this read must stop."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if not self._refused:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            return False
        return True

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._phase = _Phase.HEAD
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        # This piece ends at the empty line that ends the head: all of it is head.
        if self._head_bytes + self._piece_bytes > self.max_head_bytes:
            self._refuse()
            return
        self._phase = _Phase.BODY
        self._body_left = self._content_length()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._refused:  # a request without a body completes with its (refused) head
            return
        self._phase = _Phase.IDLE
        self._body_left = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refused and self.cycle.response_complete and not self.transport.is_closing():
            self._send_431()

    def _content_length(self) -> int | None:
        """The declared length of the body; None when it is chunked (llhttp refuses a request that
        declares both, and any other transfer coding of a request body)."""
        length = None
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)  # llhttp has checked it is digits
        return length

    # --- refusing -------------------------------------------------------------------------------

    def _refuse(self) -> None:
        self._refused = True
        logger.warning("refused a request head over %d bytes", self.max_head_bytes)
        if self.cycle is None or self.cycle.response_complete:
            self._send_431()
        else:  # requests pipelined before this one are still being answered: 431 after them
            self.flow.pause_reading()

    def _raw_problem(
        self, status_line: bytes, status: int, slug: str, detail: str, **members: Any
    ) -> None:
        """Write a problem+json response straight to the transport (no request reached the app)."""
        body = problem(status, slug, detail, **members).body
        head = [status_line]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/problem+json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + bytes(body))

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP/1.1, as problem+json instead of plain text."""
        self._raw_problem(
            b"HTTP/1.1 400 Bad Request\r\n",
            400,
            "malformed-http",
            f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})",
        )
        self.transport.close()

    def _send_431(self) -> None:
        self._raw_problem(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            431,
            "headers-too-large",
            f"the request line and headers are larger than {self.max_head_bytes} bytes",
            limit_bytes=self.max_head_bytes,
        )
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the client reads the 431, then EOF; its rest is discarded
        self._unset_keepalive_if_required()
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)


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
