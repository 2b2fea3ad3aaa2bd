"""A request body read within a limit, for the edge's and the server's Flask apps.

Flask's ``MAX_CONTENT_LENGTH`` refuses a body that says it is too large, but a chunked body
(no Content-Length) is cut at the limit and read as if it had ended there: the JSON it holds
then fails to parse, and the client is told ``invalid_json`` instead of ``too_large``.
:func:`read_body` reads one byte past the limit to tell the two apart; :func:`read_json` decodes
what it read with the wire's one JSON parser.
"""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from hwrcore import protocol

READ_CHUNK = 64 << 10


def read_body(limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, chunked or not."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)


def read_json(limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes, ProtocolError if it is not JSON."""
    return protocol.parse_json(read_body(limit))


__all__ = ["read_body", "read_json"]
