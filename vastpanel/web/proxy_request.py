"""What of a /v1/ request goes on to the instance: its path, its body and its headers.

The path goes as the client wrote it, and only when it is canonical and under /v1/: Werkzeug's
PATH_INFO is percent-decoded and urllib3 removes dot segments, so `/v1/../metrics` or
`/v1/models%3Fx=1` would otherwise reach another route of the instance, or turn into a query.

The body is never read whole: it flows upstream piece by piece as the client sends it, and a
chunked body is cut, the upstream request left unfinished, once it passes the limit.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

# Meaningful for one connection only (RFC 9110 7.6.1), or set again by whoever sends the body.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Never passed upstream: the client's key is ours (the LLM gets VAST_LLM_UPSTREAM_KEY), and the
# panel's session cookie or control key must never reach the instance.
NOT_FORWARDED = frozenset({"authorization", "cookie", "x-api-key"})

PREFIX = "/v1/"
# RFC 3986's pchar without "%": what a path segment may hold as it is.
SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@")
# What a percent-escape must not stand for: a separator, a dot (a dot segment once decoded),
# "%" (decoded twice by someone), a backslash, or a control character.
ESCAPED_REFUSED = frozenset(b"/.?#%\\") | frozenset(range(0x20)) | {0x7F}
HEX = frozenset(string.hexdigits)
PIECE_BYTES = 64 * 1024  # one read of the client's body at most
# A body this small is read before a request waits for a cold start, so that a client that
# leaves is noticed (unread bytes would look like a live client); larger ones wait unread.
PREREAD_BYTES = 64 * 1024


def canonical_path(environ: Mapping[str, Any]) -> str | None:
    """Return the request's path as the client sent it, if canonical under /v1/; else None.

    Canonical: /v1/ and one or more segments, none empty (no //), none "." or "..", each of
    RFC 3986 path characters or percent-escapes of anything but / . ? # % \\ and controls.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:  # a server that keeps no raw target: PATH_INFO, escaped again
        raw = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/")
    if "#" in raw:
        return None
    path = raw.split("?", 1)[0]
    if not path.startswith(PREFIX):
        return None
    segments = path[len(PREFIX) :].split("/")
    if not all(_canonical_segment(segment) for segment in segments):
        return None
    return path


def _canonical_segment(segment: str) -> bool:
    if segment in ("", ".", ".."):
        return False
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "%":
            escape = segment[i + 1 : i + 3]
            if len(escape) != 2 or not set(escape) <= HEX or int(escape, 16) in ESCAPED_REFUSED:
                return False
            i += 3
        elif char in SEGMENT_CHARS:
            i += 1
        else:
            return False
    return True


def forwarded_headers(headers: Mapping[str, str], upstream_key: str) -> dict[str, str]:
    """Return the client's end-to-end headers for upstream, with the upstream key if any."""
    dropped = HOP_BY_HOP | NOT_FORWARDED | listed(headers)
    forwarded = {name: value for name, value in headers.items() if name.lower() not in dropped}
    if upstream_key:
        forwarded["Authorization"] = f"Bearer {upstream_key}"
    return forwarded


def listed(headers: Mapping[str, str]) -> set[str]:
    """Name the headers a Connection header marks as hop-by-hop (the client's or the LLM's)."""
    return {h.strip().lower() for h in headers.get("Connection", "").split(",")}


class BodyTooLarge(Exception):
    """A chunked body went past the limit: the upstream request is left unfinished."""


class BodyBroken(Exception):
    """The client's body ended early or its connection failed (not an OSError on purpose:
    urllib3 would take that for the LLM's connection)."""


class RequestBody:
    """A /v1/ request's body, read only as it goes upstream (never whole), at most limit bytes.

    A Content-Length body is read to that length (the server has refused one over the limit);
    a chunked one (the server has decoded the chunks) until its end, and past the limit it
    raises BodyTooLarge instead of being cut short.
    """

    def __init__(self, environ: Mapping[str, Any], limit: int):
        self.stream = environ["wsgi.input"]
        self.limit = limit
        length = str(environ.get("CONTENT_LENGTH") or "").strip()
        self.length = int(length) if length.isdigit() else None
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        self.chunked = (
            self.length is None and chunked and bool(environ.get("wsgi.input_terminated"))
        )
        self._preread = b""
        self._read = 0
        self._ended = False

    @property
    def empty(self) -> bool:
        """Tell whether there is no body to send at all."""
        return not self.chunked and not self.length

    @property
    def pending(self) -> bool:
        """Tell whether some of the body is still unread on the client's connection."""
        return not self._ended and (self.chunked or (self.length or 0) > self._read)

    def preread_small(self) -> None:
        """Read a body of PREREAD_BYTES or less now (see PREREAD_BYTES)."""
        if self.length and self.length <= PREREAD_BYTES and not self._read:
            self._preread = self._take(self.length)

    def pieces(self) -> Iterator[bytes]:
        """Yield the body as it is read from the client."""
        if self._preread:
            yield self._preread
            self._preread = b""
        while self.pending:
            want = PIECE_BYTES
            if self.length is not None:
                want = min(want, self.length - self._read)
            piece = self._take(want, end_ok=self.chunked)
            if not piece:
                self._ended = True
                return
            if self._read > self.limit:
                raise BodyTooLarge()
            yield piece

    def _take(self, size: int, *, end_ok: bool = False) -> bytes:
        """Read up to size bytes from the client; BodyBroken if its body ends before it should."""
        try:
            piece = self.stream.read(size)
        except (OSError, ValueError) as exc:
            raise BodyBroken(f"the client's body broke off ({type(exc).__name__})") from None
        if not piece and not end_ok:
            raise BodyBroken("the client's body ended before its Content-Length")
        self._read += len(piece)
        return piece
