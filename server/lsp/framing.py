"""The LSP base protocol over stdio, for a client that may be buggy or hostile.

pygls's own loop (pygls.io_.run_async) trusts its input: a Content-Length of
99999999999 is allocated (MemoryError ends the server), one frame without a
Content-Length leaves it reading bodies as headers (it never answers again),
and a request whose params have the wrong types is dropped without a reply.
Here instead:

- `FrameReader` reads frames with bounded lines, a bounded header count and a
  bounded Content-Length. A framing error is reported as a `FramingError`
  frame, then the reader skips input up to the next `Content-Length:` header
  and goes on from there. A body cut short by the end of input ends the
  session, as the end of input does.
- `ResilientProtocol.receive` answers every request: bodies that are not JSON
  get a parse error (id null); messages that are not JSON-RPC, or whose params
  don't fit the method, get an error with the request's id; requests after
  `shutdown` get an error instead of silence.
- `serve_stdio` reads in a daemon thread (a blocked read never keeps the
  process alive) and hands frames to the event loop through a bounded queue.

docs/security.md lists the bounds.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from dataclasses import dataclass
from typing import BinaryIO

from pygls.exceptions import JsonRpcException

log = logging.getLogger("exray.lsp.framing")

MAX_CONTENT_LENGTH = 64 << 20     # one message's body; larger is refused unread
MAX_HEADER_LINE = 8 << 10         # one header line
MAX_HEADERS = 32                  # header lines of one message
QUEUE_FRAMES = 16                 # frames read ahead of the handlers

# JSON-RPC 2.0 error codes
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32602, -32603


@dataclass(frozen=True)
class FramingError:
    """A frame that could not be read; the reader has resynchronized past it."""
    reason: str


class FrameReader:
    """Frames of the LSP base protocol: `Name: value` header lines ending in an
    empty line, then Content-Length bytes. `next()` returns a body (bytes), a
    FramingError, or None at the end of input."""

    def __init__(self, stream: BinaryIO, max_length: int = MAX_CONTENT_LENGTH):
        self.stream, self.max_length = stream, max_length
        self.lost = False               # after an error: skip to the next Content-Length
        self.ended = ""                 # why the input ended early ("" for a clean end)

    def _line(self) -> bytes:
        return self.stream.readline(MAX_HEADER_LINE + 1)

    def _resync(self) -> bytes:
        """Skip input up to a line holding `Content-Length:` (a body without a
        newline may run into it); returns that line from the header on."""
        while True:
            line = self._line()
            if not line:
                return b""
            at = line.lower().find(b"content-length:")
            if at >= 0 and line.endswith(b"\n"):
                self.lost = False
                return line[at:]

    def _fail(self, reason: str) -> FramingError:
        self.lost = True
        return FramingError(reason)

    def next(self) -> bytes | FramingError | None:
        line = self._resync() if self.lost else self._line()
        headers: dict[bytes, bytes] = {}
        while True:
            if not line:
                if headers:
                    self.ended = "the input ended inside a message's headers"
                return None
            if not line.endswith(b"\n"):
                if len(line) > MAX_HEADER_LINE:
                    return self._fail(f"a header line longer than {MAX_HEADER_LINE} bytes")
                self.ended = "the input ended inside a header line"
                return None
            text = line.rstrip(b"\r\n")
            if not text:
                if headers:
                    break
                line = self._line()     # blank lines between messages: harmless
                continue
            name, colon, value = text.partition(b":")
            if not colon or not name.strip() or name != name.strip():
                return self._fail(f"not a header line: {text[:60]!r}")
            headers[name.lower()] = value.strip()
            if len(headers) > MAX_HEADERS:
                return self._fail(f"more than {MAX_HEADERS} header lines")
            line = self._line()
        raw = headers.get(b"content-length")
        if raw is None:
            return self._fail("a message without a Content-Length header")
        if not (raw.isdigit() and raw.isascii()):
            return self._fail(f"Content-Length is not a non-negative integer: {raw[:40]!r}")
        n = int(raw)
        if n > self.max_length:
            return self._fail(f"Content-Length {n:,} is over the limit of {self.max_length:,} bytes")
        body = self.stream.read(n) if n else b""
        if len(body) < n:
            self.ended = f"the input ended {n - len(body):,} bytes before the end of a message's body"
            return None
        return body


def _valid_id(data: dict):
    """The request's id when it is one JSON-RPC allows (an integer or a string), else None."""
    i = data.get("id")
    return i if isinstance(i, (int, str)) and not isinstance(i, bool) else None


def _what_does_not_fit(e: BaseException) -> str:
    """cattrs' validation error in a few words: which fields, what is wrong."""
    try:
        from cattrs import transform_error
        lines = transform_error(e, path="$")
    except Exception:                   # noqa: BLE001 - not a cattrs error: its own words
        lines = [str(e)]
    text = "; ".join(lines[:5]) + ("; ..." if len(lines) > 5 else "")
    return text[:500]


class ResilientProtocol:
    """Mixed into the server's protocol (a pygls JsonRPCProtocol): `receive`
    takes one frame's body and answers every request, whatever the body."""

    def send_error(self, msg_id, code: int, message: str) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id,
                           "error": {"code": code, "message": message}}).encode()
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def receive(self, body: bytes) -> None:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            log.warning("a message that is not JSON: %s", e)
            self.send_error(None, PARSE_ERROR, f"Parse error: the message is not JSON ({e})"[:300])
            return
        if not isinstance(data, dict):
            self.send_error(None, INVALID_REQUEST, "Invalid request: a message is a JSON object "
                                                   "(batches are not part of LSP)")
            return
        msg_id, method = _valid_id(data), data.get("method")
        is_request = "id" in data and "method" in data
        if data.get("jsonrpc") != "2.0" or ("method" in data and not isinstance(method, str)):
            if is_request or "result" not in data and "error" not in data:
                self.send_error(msg_id, INVALID_REQUEST,
                                "Invalid request: expected a JSON-RPC 2.0 message "
                                "(\"jsonrpc\": \"2.0\" and a string \"method\")")
            return
        if is_request and msg_id is None:
            self.send_error(None, INVALID_REQUEST, "Invalid request: an id is an integer or a string")
            return
        if is_request and self.shutting_down() and method != "exit":
            self.send_error(msg_id, INVALID_REQUEST, "Invalid request: the server is shutting down")
            return
        try:
            message = self.structure_message(data)
        except JsonRpcException as e:
            log.warning("message %r: params don't fit the method: %s", method, e.__cause__ or e)
            if is_request:
                self.send_error(msg_id, INVALID_PARAMS, f"Invalid params for {method}: "
                                                        f"{_what_does_not_fit(e.__cause__ or e)}")
            return
        except Exception as e:          # noqa: BLE001 - a converter's bug is the message's error
            log.exception("message %r could not be read", method)
            if is_request:
                self.send_error(msg_id, INTERNAL_ERROR, f"Internal error reading {method}: {e}"[:300])
            return
        if isinstance(message, dict):   # structure_message passes non-JSON-RPC dicts through
            if is_request:
                self.send_error(msg_id, INVALID_REQUEST, "Invalid request")
            return
        self.handle_message(message)

    def shutting_down(self) -> bool:
        return bool(getattr(self, "_shutdown", False))


async def _serve(reader: FrameReader, protocol: ResilientProtocol) -> str:
    """Hand each frame to the protocol until the input ends; returns why it ended."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(QUEUE_FRAMES)

    def read_all() -> None:
        try:
            while True:
                frame = reader.next()
                try:
                    handed = asyncio.run_coroutine_threadsafe(queue.put(frame), loop)
                except RuntimeError:    # the loop closed (after `exit`): nobody to hand frames to
                    return
                handed.result()
                if frame is None:
                    return
        except Exception as e:          # noqa: BLE001 - the session ends; say why
            log.exception("reading stdin failed")
            reader.ended = f"reading the input failed: {e}"
            try:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop)
            except RuntimeError:        # the loop is closed: the session is over anyway
                pass

    threading.Thread(target=read_all, name="lsp-stdin", daemon=True).start()
    while True:
        frame = await queue.get()
        if frame is None:
            return reader.ended
        if isinstance(frame, FramingError):
            log.warning("framing error, skipping to the next message: %s", frame.reason)
            continue
        try:
            protocol.receive(frame)
        except Exception:               # noqa: BLE001 - one message never ends the session
            log.exception("handling a message failed")


def serve_stdio(server, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """What pygls's start_io does, with FrameReader and ResilientProtocol.receive."""
    from pygls.io_ import StdoutWriter

    reader = FrameReader(stdin or sys.stdin.buffer)
    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
    try:
        why = asyncio.run(_serve(reader, server.protocol))
        if why:
            log.warning("ending the session: %s", why)
    except BrokenPipeError:
        log.error("the client closed its end of the connection; shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()
