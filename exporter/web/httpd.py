"""A small asyncio HTTP/1.1 server for the exporter's few endpoints, bounded against hostile clients.

One thread runs an event loop; an idle or slow connection costs a socket and a coroutine, never a thread.
Every cost a client can impose has a bound:

- at most `max_connections` connections at once; a new one past that evicts the connection that has waited
  longest without sending a whole request (an idle or slow one), or is closed at once if every connection is
  busy, so idle sockets can never lock a scraper out (a listen backlog of 1,024 absorbs bursts of connects);
- a request's line and headers must arrive within `header_timeout` of its first byte, and be at most
  `max_header_bytes`; a keep-alive connection may stay idle for `idle_timeout` between requests;
- a body is read whole, within `body_timeout`, or refused: a `Content-Length` that is not a number gets 400,
  one over `max_body_bytes` gets 413, `Transfer-Encoding` (chunked) gets 501, and each closes the
  connection, so no leftover bytes are ever read as a new request;
- a response a client does not read is abandoned after `write_timeout`.

Handlers are coroutines; CPU-heavy work belongs in an executor (see exporter.web.server).
"""

from __future__ import annotations

import array
import asyncio
import bisect
import concurrent.futures
import ctypes
import ctypes.util
import itertools
import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

log = logging.getLogger(__name__)

WRITE_SLICE = 1024 * 1024  # what one connection's answer may hold in memory beside the published bytes
BLOCKING_WRITE = 256 * 1024  # answers from this size on are sent from a thread (see _write_blocking)
WRITERS = 4
IOV_MAX = 1024  # buffers per sendmsg call (Linux's UIO_MAXIOV)
SLOW_CLIENT = 2  # seconds a client may take over one sendmsg call before the event loop sends the rest
RESOURCE_LOG_EVERY = 60.0  # seconds between log lines about accepts refused for want of file descriptors
TRIM_EVERY = 10.0  # seconds between hand-backs of freed memory (each costs about a millisecond at 10,000 datasets)
FIRST_BYTE_POLL = 0.02  # seconds between looks for a TLS client's first byte
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE = re.compile(rb"([A-Z]+) ([!-~]+) HTTP/(1\.[01])")  # whole: `$` would let a trailing LF through
# A field value: visible characters, spaces, tabs and obs-text, nothing else (RFC 9110 5.5). A bare LF, CR or NUL
# inside one is how a request is smuggled past a proxy that ends lines differently: refused.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 10.0
    write_timeout: float = 60.0
    handshake_timeout: float = 5.0  # a TLS handshake, counted as a connection from its first byte
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    backlog: int = 1024


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lowercased; repeated headers joined with ", "
    body: bytes
    peer: str
    version: str = "1.1"

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


@dataclass
class Response:
    status: int
    body: bytes | Sequence[bytes] = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Accepted(asyncio.Protocol):
    """A connection just accepted: reading paused at once (before a byte is read), handed to the server."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.server._accept(transport)


class HttpServer:
    """Serves `handler` on host:port from a thread of its own. `extra_headers` is read for every response;
    `tls` when listening starts and on `refresh_tls()`, which listens again with a changed TLS context (the
    context has to be the listener's: a handshake started on an accepted stream can lose the ClientHello)."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        limits: Limits | None = None,
        tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        extra_headers: Callable[[], dict[str, str]] = dict,
        server_name: str = "",
    ) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.tls = tls
        self.extra_headers = extra_headers
        self.server_name = server_name
        self.active = 0
        self.refused = 0
        self.evicted = 0
        self._loop = asyncio.new_event_loop()
        self._connections: set[asyncio.Task[None]] = set()
        # Connections that wait on their client (a handshake, a request's head, an answer it does not read), and
        # since when they last made progress: when all slots are taken, the longest waiting of those that never
        # sent a whole request is evicted first, then the longest waiting of the others.
        self._waiting: dict[asyncio.Task[None], float] = {}
        self._proven: set[asyncio.Task[None]] = set()  # connections that sent a whole request
        self._resource_errors = 0  # accepts refused for want of file descriptors since the last log line
        self._resource_logged = 0.0
        self._thread_stopping = False
        self._context = tls()
        # Bind now, in the caller's thread, so that a busy port is an error of the constructor.
        self._socket = self._bind(host, port)
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._writers = concurrent.futures.ThreadPoolExecutor(WRITERS, thread_name_prefix="web-writer")
        self._writing = 0  # answers being sent by the writers

    def _bind(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and accepted
        # sockets inherit it; without it every small answer on a kept-alive connection waits for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(self.limits.backlog)
        except OSError:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        self._loop.set_exception_handler(self._loop_error)
        try:
            self._server = self._loop.run_until_complete(self._listen(self._socket))
        finally:
            self._started.set()
        trimming = self._loop.create_task(self._hand_memory_back())
        self._loop.run_forever()
        trimming.cancel()
        self._loop.run_until_complete(asyncio.gather(trimming, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()
        self._writers.shutdown(wait=True)

    async def _listen(self, sock: socket.socket) -> asyncio.Server:
        # TLS is not the listener's: a connection counts from its first byte, its handshake included.
        return await self._loop.create_server(lambda: _Accepted(self), sock=sock, backlog=self.limits.backlog)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's own errors; running out of file descriptors is said once a minute, with a count,
        not once per refused accept (thousands a second under a flood of connects)."""
        if "out of system resource" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        self._resource_errors += 1
        now = time.monotonic()
        if now - self._resource_logged >= RESOURCE_LOG_EVERY:
            log.error(
                "cannot accept connections: out of file descriptors (%d accepts refused; %s)",
                self._resource_errors,
                context.get("exception"),
            )
            self._resource_errors, self._resource_logged = 0, now

    async def _hand_memory_back(self) -> None:
        """Every TRIM_EVERY seconds, hand freed heap memory back to the system. glibc keeps it for reuse: a
        flood of connections, or an upstream's outsized answers, would otherwise leave the exporter hundreds of
        megabytes larger for good (bench/attacks.py). Its buffers are freed over the seconds after it ends
        (transports close, the collector runs), so a hand-back at one moment would not do."""
        while True:
            await asyncio.sleep(TRIM_EVERY)
            malloc_trim()

    def _accept(self, transport: asyncio.Transport) -> None:
        self._loop.create_task(self._accepted(transport))

    def refresh_tls(self) -> None:
        """Listen again, on the same address, if the TLS context changed; open connections carry on."""
        if self.tls() is self._context:
            return
        host, port = self.address

        async def again() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            self._context = self.tls()
            self._socket = self._bind(host, port)
            self._server = await self._listen(self._socket)

        asyncio.run_coroutine_threadsafe(again(), self._loop).result(timeout=30)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._started = threading.Event()
        self._thread.start()
        self._started.wait(30)

    def stop(self) -> None:
        """Stop listening, end every connection, and wait for the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        else:
            self._loop.close()
            self._writers.shutdown(wait=True)
        self._socket.close()

    async def _close(self) -> None:
        self._thread_stopping = True
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    # ----- connections -----------------------------------------------------------------------------------
    async def _accepted(self, transport: asyncio.Transport) -> None:
        if self.active >= self.limits.max_connections:
            if not self._waiting:
                self.refused += 1
                transport.abort()  # every connection is busy: no thread, no buffer, no answer
                return
            unproven = [task for task in self._waiting if task not in self._proven]
            oldest = min(unproven or self._waiting, key=self._waiting.__getitem__)
            del self._waiting[oldest]
            self.evicted += 1
            oldest.cancel()
        task = asyncio.current_task()
        assert task is not None
        self.active += 1
        self._connections.add(task)
        self._waiting[task] = time.monotonic()
        try:
            reader, writer = await self._streams(transport)
            transport = writer.transport  # type: ignore[assignment]  # the TLS one, if any: both read and write
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass  # the client went away, or was too slow: nothing to answer
        except asyncio.CancelledError:
            if self._thread_stopping:
                raise
            # evicted for a newer connection: end quietly
        finally:
            self.active -= 1
            self._connections.discard(task)
            self._waiting.pop(task, None)
            self._proven.discard(task)
            transport.abort()

    async def _streams(self, transport: asyncio.Transport) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A reader and writer over the connection, after a TLS handshake (within handshake_timeout) where the
        listener serves TLS. Reading was paused from the start, so no byte of a ClientHello is lost."""
        loop = self._loop
        reader = asyncio.StreamReader(limit=self.limits.max_header_bytes, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        context = self._context
        if context is not None:
            started = time.monotonic()
            await self._first_byte(transport, self.limits.handshake_timeout)
            transport = await loop.start_tls(  # type: ignore[assignment]
                transport,
                protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=max(0.1, self.limits.handshake_timeout - (time.monotonic() - started)),
            )
        else:
            transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if context is None:
            transport.resume_reading()
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    @staticmethod
    async def _first_byte(transport: asyncio.Transport, timeout: float) -> None:
        """Wait for the client's first byte (peeked: it stays for the TLS layer) before a TLS session is set up,
        with its buffers of a quarter of a megabyte: a connection that sends nothing costs a socket only."""
        fd = transport.get_extra_info("socket").fileno()
        deadline = time.monotonic() + timeout
        while True:
            view = socket.socket(fileno=fd)  # the transport's descriptor, borrowed: detached, never closed, below
            try:
                if view.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return
                raise ConnectionResetError("closed before its handshake")
            except BlockingIOError:
                pass
            finally:
                view.detach()
            if time.monotonic() >= deadline:
                raise TimeoutError("no handshake within handshake_timeout")
            await asyncio.sleep(FIRST_BYTE_POLL)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        first = True
        while True:
            try:
                request = await self._read_request(reader, peer, first)
            except _BadRequest as bad:
                await self._write(writer, Response(bad.status, f"{bad}\n".encode(), close=True))
                return
            if request is None:
                return
            if first:
                task = asyncio.current_task()
                assert task is not None
                self._proven.add(task)
            first = False
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("the handler of %s %s failed", request.method, request.path)
                response = Response(500, b"Internal error; see the exporter's log.\n", close=True)
            close = response.close or _wants_close(request)
            response.close = close
            await self._write(writer, response, head_only=request.method == "HEAD")
            if close:
                return

    async def _read_request(self, reader: asyncio.StreamReader, peer: str, first: bool) -> Request | None:
        limits = self.limits
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = time.monotonic()
        try:
            # Between requests a connection may idle; once a request begins, its head has a deadline.
            opening = await asyncio.wait_for(reader.read(1), limits.header_timeout if first else limits.idle_timeout)
            if not opening:
                return None
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.header_timeout)
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "Request header fields too large.") from None
        except asyncio.IncompleteReadError:
            return None
        finally:
            self._waiting.pop(task, None)
        head = (opening + rest)[:-4].split(b"\r\n")
        match = _REQUEST_LINE.fullmatch(head[0])
        if match is None:
            raise _BadRequest(400, "Malformed request line.")
        method, target = match.group(1).decode(), match.group(2).decode("latin-1")
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):  # obsolete line folding included: never merge lines
                raise _BadRequest(400, "Malformed header line.")
            if not _FIELD_VALUE.fullmatch(value):
                raise _BadRequest(400, "A header value holds a control character.")
            key = name.decode().lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "Transfer-Encoding (chunked bodies) is not supported; send Content-Length.")
        body = b""
        if "content-length" in headers:
            declared = headers["content-length"]
            if not declared.isascii() or not declared.isdigit():  # "abc", "-1", "1, 2": never guessed at
                raise _BadRequest(400, "Malformed Content-Length.")
            if len(declared) > 12 or int(declared) > limits.max_body_bytes:
                raise _BadRequest(413, f"Request body over {limits.max_body_bytes} bytes.")
            try:
                body = await asyncio.wait_for(reader.readexactly(int(declared)), limits.body_timeout)
            except asyncio.IncompleteReadError:
                return None
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, body, peer, match.group(3).decode())

    async def _write(self, writer: asyncio.StreamWriter, response: Response, head_only: bool = False) -> None:
        chunks = [response.body] if isinstance(response.body, bytes | bytearray) else list(response.body)
        length = sum(map(len, chunks))
        reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}"]
        lines.append(f"Content-Length: {length}")
        if self.server_name:
            lines.append(f"Server: {self.server_name}")
        for name, value in {**self.extra_headers(), **response.headers}.items():
            lines.append(f"{name}: {value}")
        if response.close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head_only:
            chunks, length = [], 0
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = time.monotonic()  # waiting on the client to read: evicted first if it stalls
        try:
            if length >= BLOCKING_WRITE and await self._write_blocking(writer, head, chunks):
                return
            await self._write_slices(writer, [head, *chunks])
        finally:
            self._waiting.pop(task, None)

    async def _write_slices(self, writer: asyncio.StreamWriter, chunks: Sequence[bytes]) -> None:
        """In slices, each drained before the next: a large answer never sits in memory a second time, and a
        connection holds at most about one slice. The slices are found and joined in C: a plain answer is a
        chunk per dataset and family, and while a publish renders, every step this thread takes waits for the
        GIL."""
        task = asyncio.current_task()
        for piece in _slices(chunks):
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
            if task in self._waiting:
                self._waiting[task] = time.monotonic()  # the client reads: progress
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout)

    async def _write_blocking(self, writer: asyncio.StreamWriter, head: bytes, chunks: Sequence[bytes]) -> bool:
        """Send a large answer from a thread, with the socket blocking: the kernel then takes up to IOV_MAX
        chunks in one call, straight from the published bytes (no slices joined: copying a large answer into
        new memory costs more than sending it), and this thread waits for the GIL once per call rather than at
        every turn of the event loop (with a publish rendering in the collection loop's thread, each turn
        waited up to a switch interval). A client that does not take a call's bytes within SLOW_CLIENT gets
        the rest through the event loop. Plain TCP only: TLS goes through the event loop. False if nothing
        was sent."""
        transport = cast(asyncio.Transport, writer.transport)  # a socket's: it reads as well as writes
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None or self._writing >= WRITERS:
            return False  # TLS, or every writer busy (slow clients): the event loop sends it
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
        if transport.get_write_buffer_size():
            return False
        reading = transport.is_reading()  # not when the reader's buffer is full: it stays paused then
        transport.pause_reading()
        self._writing += 1
        try:
            sent = await asyncio.get_running_loop().run_in_executor(self._writers, _send_blocking, sock, head, chunks)
        finally:
            self._writing -= 1
            if reading:
                transport.resume_reading()
        await self._write_slices(writer, [head, *chunks] if sent is None else _after(head, chunks, sent))
        return True


def _slices(chunks: Sequence[bytes]) -> Iterator[bytes | memoryview]:
    """`chunks` as slices of about WRITE_SLICE bytes: runs of small chunks joined (found and joined in C: a
    plain answer is 200,000 chunks), a large chunk cut into views of itself, never copied whole. Where each
    part ends is kept as machine integers: a Python int per chunk, held while a client stalls, left CPython's
    small-object arenas fragmented after 256 stalled readers went (25 MiB for good)."""
    parts: list[bytes | memoryview] = []
    for chunk in chunks:
        if len(chunk) > WRITE_SLICE:
            view = memoryview(chunk)
            parts.extend(view[start : start + WRITE_SLICE] for start in range(0, len(chunk), WRITE_SLICE))
        else:
            parts.append(chunk)
    ends = array.array("q", itertools.accumulate(map(len, parts)))
    start = 0
    while start < len(parts):
        stop = bisect.bisect_left(ends, (ends[start - 1] if start else 0) + WRITE_SLICE, lo=start) + 1
        yield parts[start] if stop - start == 1 else b"".join(parts[start:stop])
        start = stop


def _after(head: bytes, chunks: Sequence[bytes], sent: int) -> list[bytes]:
    """What is left of head and chunks once `sent` bytes of them went out."""
    rest = [head, *chunks]
    ends = list(itertools.accumulate(map(len, rest)))
    index = bisect.bisect_right(ends, sent)
    if index == len(rest):
        return []
    skip = sent - (ends[index - 1] if index else 0)
    return [rest[index][skip:], *rest[index + 1 :]]


def _send_blocking(sock: Any, head: bytes, chunks: Sequence[bytes]) -> int | None:
    """In a writer thread: send head and chunks on a duplicate of `sock` in blocking mode, IOV_MAX chunks per
    call and without copying them; the bytes sent (all of them, or fewer when a call waited past
    SLOW_CLIENT), or None when nothing could be sent."""
    duplicate = socket.socket(fileno=os.dup(sock.fileno()))
    sent = 0
    pieces = [head, *filter(None, chunks)]
    try:
        duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SLOW_CLIENT, 0))
        duplicate.setblocking(True)  # the file description is shared: the event loop's socket blocks too
        for start in range(0, len(pieces), IOV_MAX):
            batch = pieces[start : start + IOV_MAX]
            count = duplicate.sendmsg(batch)  # all of it in one call, unless the client is slow
            sent += count
            if count < sum(map(len, batch)):
                return sent
    except OSError:
        return sent or None
    finally:
        duplicate.setblocking(False)  # before the event loop uses the socket again
        duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
        duplicate.close()
    return sent


def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return None


_TRIM = _libc_trim()


def malloc_trim() -> None:
    """glibc's malloc_trim(0): free heap memory handed back to the system."""
    if _TRIM is not None:
        _TRIM(0)


def _wants_close(request: Request) -> bool:
    connection = request.header("connection").lower()
    return "close" in connection or (request.version == "1.0" and "keep-alive" not in connection)
