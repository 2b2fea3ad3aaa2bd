"""Framing of an append-only journal: checksummed JSON records that survive torn writes.

Record: magic ``b"HWJ1"``, payload length (u32), sequence number (u64), CRC32 of those 16 bytes
and the payload (u32), all little-endian, then the payload: a UTF-8 JSON object with an ``op``.
A reader skips damaged bytes up to the next record that checks out, so one torn or corrupted
record never hides the ones after it. A file is read record by record (:class:`JournalReader`),
never whole, so reading a journal costs memory of one record, not of the file. What the
operations mean is up to the journal's owner (``hwrcore.store`` for the corrections store).

A journal cannot tell by itself that its end was cut off (a cut at a record's boundary, or
inside a record, looks like a torn write); its owner keeps a high-water mark beside it
(:func:`write_mark` / :func:`read_mark`): the last sequence number it acknowledged.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"HWJ1"
_HEAD = struct.Struct("<4sIQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _CRC.size
MAX_RECORD_BYTES = 16 << 20
_MARK = struct.Struct("<4sQI")
MARK_MAGIC = b"HWM1"
_FIND_BLOCK = 1 << 16


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
    offsets: list[int] = field(default_factory=list)  # where each record starts


Reader = Callable[[int, int], bytes]  # (offset, size) -> at most size bytes


def _parse_at(
    read: Reader, pos: int, size: int, ops: Collection[str] | None
) -> tuple[int, dict[str, Any], int] | None:
    head = read(pos, HEADER_SIZE)
    if len(head) < HEADER_SIZE:
        return None
    magic, length, seq = _HEAD.unpack_from(head)
    end = pos + HEADER_SIZE + length
    if magic != MAGIC or length > MAX_RECORD_BYTES or end > size:
        return None
    (crc,) = _CRC.unpack_from(head, _HEAD.size)
    body = read(pos + HEADER_SIZE, length)
    if len(body) != length or zlib.crc32(body, zlib.crc32(head[: _HEAD.size])) != crc:
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


def _find_magic(read: Reader, start: int, size: int) -> int:
    """Offset of the next ``MAGIC`` at or after ``start``, or -1."""
    pos = start
    while pos < size:
        block = read(pos, _FIND_BLOCK + len(MAGIC) - 1)
        i = block.find(MAGIC)
        if i >= 0:
            return pos + i
        if len(block) < len(MAGIC):
            return -1
        pos += _FIND_BLOCK
    return -1


class JournalReader:
    """Iterates ``(offset, seq, payload)`` over a journal's good records, one at a time.

    ``source`` is the journal's bytes or an open file descriptor (read with ``pread``). With
    ``ops``, a record whose ``op`` is not one of them counts as damaged. Once iterated,
    ``valid_end``, ``skipped`` (damaged bytes before a later good record), ``torn`` (bytes
    after the last good record) and ``count`` describe the file.
    """

    def __init__(self, source: bytes | int, ops: Collection[str] | None = None):
        if isinstance(source, int):
            fd = source
            self.size = os.fstat(fd).st_size
            self._read: Reader = lambda off, n: os.pread(fd, n, off)
        else:
            data = bytes(source)
            self.size = len(data)
            self._read = lambda off, n: data[off : off + n]
        self.ops = ops
        self.valid_end = self.skipped = self.torn = self.count = 0

    def __iter__(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        pos = valid_end = skipped = 0
        size = self.size
        while pos + HEADER_SIZE <= size:
            rec = _parse_at(self._read, pos, size, self.ops)
            if rec is None:
                pos = _find_magic(self._read, pos + 1, size)
                if pos < 0:
                    break
                continue
            seq, payload, end = rec
            skipped += pos - valid_end
            self.count += 1
            self.valid_end, self.skipped = end, skipped
            yield pos, seq, payload
            pos = valid_end = end
        self.valid_end, self.skipped, self.torn = valid_end, skipped, size - valid_end


def read_record(fd: int, offset: int) -> dict[str, Any]:
    """The payload of the record at ``offset`` of an open journal; ValueError if it is not one."""
    rec = _parse_at(lambda off, n: os.pread(fd, n, off), offset, os.fstat(fd).st_size, None)
    if rec is None:
        raise ValueError(f"no journal record at offset {offset}")
    return rec[1]


def scan_journal(data: bytes, ops: Collection[str] | None = None) -> JournalScan:
    """Parse a journal held in memory, skipping damaged bytes up to the next good record.

    With ``ops``, a record whose ``op`` is not one of them counts as damaged.
    """
    reader = JournalReader(data, ops)
    records, offsets = [], []
    for off, seq, payload in reader:
        records.append((seq, payload))
        offsets.append(off)
    return JournalScan(records, reader.valid_end, reader.skipped, reader.torn, offsets)


def encode_mark(seq: int) -> bytes:
    """The high-water mark's 16 bytes: magic, the last acknowledged sequence number, CRC32."""
    head = MARK_MAGIC + struct.pack("<Q", seq)
    return head + _CRC.pack(zlib.crc32(head))


def decode_mark(data: bytes) -> int | None:
    """The sequence number of a mark, or None when it is missing or damaged."""
    if len(data) < _MARK.size:
        return None
    magic, seq, crc = _MARK.unpack_from(data)
    if magic != MARK_MAGIC or zlib.crc32(data[:12]) != crc:
        return None
    return int(seq)
