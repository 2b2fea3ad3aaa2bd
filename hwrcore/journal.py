"""Framing of an append-only journal: checksummed JSON records that survive torn writes.

Record: magic ``b"HWJ1"``, payload length (u32), sequence number (u64), CRC32 of those 16 bytes
and the payload (u32), all little-endian, then the payload: a UTF-8 JSON object with an ``op``.
A reader skips damaged bytes up to the next record that checks out, so one torn or corrupted
record never hides the ones after it. What the operations mean is up to the journal's owner
(``hwrcore.store`` for the corrections store).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

MAGIC = b"HWJ1"
_HEAD = struct.Struct("<4sIQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _CRC.size
MAX_RECORD_BYTES = 16 << 20


def encode_record(seq: int, payload: dict[str, Any]) -> bytes:
    """One journal record: header, CRC32 over header and payload, JSON payload."""
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(body) > MAX_RECORD_BYTES:
        raise ValueError(f"journal record of {len(body)} bytes; the limit is {MAX_RECORD_BYTES}")
    head = _HEAD.pack(MAGIC, len(body), seq)
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


@dataclass
class JournalScan:
    """What a journal file holds: its good records, and how many bytes were damaged or torn."""

    records: list[tuple[int, dict[str, Any]]]
    valid_end: int  # offset just past the last good record
    skipped: int  # damaged bytes before a later good record
    torn: int  # bytes after the last good record (a write cut short)


def _parse_at(
    data: bytes, pos: int, ops: Collection[str] | None
) -> tuple[int, dict[str, Any], int] | None:
    magic, length, seq = _HEAD.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if magic != MAGIC or length > MAX_RECORD_BYTES or end > len(data):
        return None
    (crc,) = _CRC.unpack_from(data, pos + _HEAD.size)
    body = data[pos + HEADER_SIZE : end]
    if zlib.crc32(body, zlib.crc32(data[pos : pos + _HEAD.size])) != crc:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("op"), str):
        return None
    if ops is not None and payload["op"] not in ops:
        return None
    return seq, payload, end


def scan_journal(data: bytes, ops: Collection[str] | None = None) -> JournalScan:
    """Parse a journal, skipping damaged bytes up to the next record that checks out.

    With ``ops``, a record whose ``op`` is not one of them counts as damaged.
    """
    records: list[tuple[int, dict[str, Any]]] = []
    pos = valid_end = skipped = 0
    while pos + HEADER_SIZE <= len(data):
        rec = _parse_at(data, pos, ops)
        if rec is None:
            pos = data.find(MAGIC, pos + 1)
            if pos < 0:
                break
            continue
        seq, payload, end = rec
        skipped += pos - valid_end
        records.append((seq, payload))
        pos = valid_end = end
    return JournalScan(records, valid_end, skipped, len(data) - valid_end)
