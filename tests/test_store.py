"""The corrections store: every field round-trips, writes are idempotent and bounded, damaged
journals and snapshots are recovered from, and the HDF5 snapshot reads with plain h5py."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from hwrcore import journal as journal_module
from hwrcore import store as store_module
from hwrcore.journal import encode_record, scan_journal
from hwrcore.store import (
    KIND,
    SCHEMA_VERSION,
    Correction,
    CorrectionStore,
    InvalidCorrection,
    StoreError,
    StoreFull,
    read_store,
    recover,
    simplify_strokes,
)

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {
    "id",
    "label",
    "image",
    "strokes",
    "predicted",
    "confidence",
    "model_version",
    "created",
    "updated",
    "synced",
    "embedding",
    "embedding_version",
    "kind",
    "withdrawn",
    "withdrawn_by",
    "withdrawal_synced",
    "row_crc32",
}

# Adds corrections with the given ids and dies (SIGKILL) without closing: a power cut after the
# acknowledgements, which leaves the changes in the journal only.
CHILD = """
import json, os, signal, sys
import numpy as np
from hwrcore.store import Correction, CorrectionStore
path, ids = sys.argv[1], json.loads(sys.argv[2])
s = CorrectionStore(path, compact_every=100_000)
for i, cid in enumerate(ids):
    s.add(Correction(id=cid, label=str(i % 10), image=np.full((28, 28), (i % 100) / 100, np.float32),
                     strokes=[[[i, 0], [0, i]]], predicted=None, confidence=None,
                     model_version="child", created=1.0e9 + i))
os.kill(os.getpid(), signal.SIGKILL)
"""


def make(i: int, **kw: object) -> Correction:
    """A correction whose every field is distinct and derived from ``i``."""
    rng = np.random.default_rng(i)
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "label": str(i % 10),
        "image": rng.random((28, 28), dtype=np.float32),
        "strokes": [[[float(i), 2.5], [3, 4]], [[10, 11.3]]],  # kept as is: 0.1 px
        "predicted": str((i + 1) % 10),
        "confidence": 0.25 + i / 1000,
        "model_version": f"digits-{i % 3}",
        "created": 1_700_000_000.5 + i,
        "embedding": rng.standard_normal(16).astype(np.float32),
    }
    fields.update(kw)
    return Correction(**fields)  # type: ignore[arg-type]


def assert_same(got: Correction | None, want: Correction, synced: bool | None = None) -> None:
    assert got is not None, want.id
    assert (got.id, got.label, got.predicted, got.model_version, got.created) == (
        want.id,
        want.label,
        want.predicted,
        want.model_version,
        want.created,
    )
    assert got.strokes == json.loads(simplify_strokes(want.strokes))
    assert got.confidence == want.confidence
    assert got.image.dtype == np.float32 and np.array_equal(got.image, want.image)
    if want.embedding is None:
        assert got.embedding is None
    else:
        assert got.embedding is not None and np.array_equal(got.embedding, want.embedding)
    assert got.synced == (want.synced if synced is None else synced)
    assert got.embedded_by == want.embedded_by


def kill_after_adding(path: Path, n: int) -> list[str]:
    """Ids that a child process added and acknowledged before it was killed."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), json.dumps(ids)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return ids


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "custom_digits.h5"


def test_every_field_round_trips_in_memory_after_reopen_and_in_h5py(path: Path) -> None:
    items = [
        make(0),
        make(1, strokes=None, predicted=None, confidence=None, embedding=None),
        make(2, embedding_version="7.0.0"),
    ]
    with CorrectionStore(path) as store:
        for c in items:
            store.add(c)
        for c in items:
            assert_same(store.get(c.id), c)
        assert store.get(str(uuid.uuid4())) is None
    with CorrectionStore(path) as store:
        got = store.all()
        assert [c.id for c in got] == [c.id for c in items]
        for g, c in zip(got, items, strict=True):
            assert_same(g, c)
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["image"][1], items[1].image)
        assert json.loads(f["strokes"].asstr()[0]) == items[0].strokes
        assert f["strokes"].asstr()[1] == "null"
        assert f["predicted"].asstr()[1] == "" and math.isnan(f["confidence"][1])
        assert np.array_equal(f["embedding"][0], items[0].embedding)
        assert f["embedding"][1].size == 0
        assert list(f["embedding_version"].asstr()[:]) == ["", "", "7.0.0"]


def test_stored_arrays_are_copies_and_read_only(path: Path) -> None:
    c = make(3)
    with CorrectionStore(path, fsync=False) as store:
        store.add(c)
        c.image[:] = 0.0
        got = store.get(c.id)
        assert got is not None and got.image.max() > 0
        with pytest.raises(ValueError):
            got.image[0, 0] = 1.0


def test_newest_gives_the_most_recent_oldest_first(path: Path) -> None:
    with CorrectionStore(path, fsync=False) as store:
        added = [make(i) for i in range(5)]
        for c in added:
            store.add(c)
        assert [c.id for c in store.newest(3)] == [c.id for c in added[2:]]
        assert [c.id for c in store.newest(10)] == [c.id for c in added]
        assert store.newest(0) == []


def test_adding_an_existing_id_is_a_no_op(path: Path) -> None:
    c = make(1)
    with CorrectionStore(path) as store:
        store.add(c)
        seq = store.stats()["seq"]
        store.add(c)
        store.add(make(2, id=c.id, label="9"))
        assert len(store) == 1
        assert store.get(c.id).label == c.label  # type: ignore[union-attr]
        assert store.stats()["seq"] == seq
    assert len(read_store(path)) == 1


def test_pending_is_oldest_first_and_mark_synced_is_durable(path: Path) -> None:
    items = [make(i) for i in range(6)]
    with CorrectionStore(path) as store:
        for c in items:
            store.add(c)
        assert [c.id for c in store.pending()] == [c.id for c in items]
        assert [c.id for c in store.pending(limit=2)] == [c.id for c in items[:2]]
        assert store.pending_count() == 6
        assert store.mark_synced([items[0].id, items[2].id, items[2].id, "unknown"]) == 2
        assert store.mark_synced([items[0].id]) == 0
        assert [c.id for c in store.pending()] == [items[i].id for i in (1, 3, 4, 5)]
        assert store.pending_count() == 4
        assert store.get(items[0].id).synced  # type: ignore[union-attr]
    with CorrectionStore(path) as store:
        assert store.pending_count() == 4
        assert [c.synced for c in store.all()] == [True, False, True, False, False, False]
    with h5py.File(path, "r") as f:
        assert list(f["synced"][:]) == [True, False, True, False, False, False]
        assert f["updated"][0] >= f["updated"][1]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _dropped_in_log(caplog: pytest.LogCaptureFixture) -> int:
    """The sum of the counts that the eviction warnings give."""
    counts = [re.search(r"dropped the (\d+) oldest", w) for w in _warnings(caplog)]
    return sum(int(m.group(1)) for m in counts if m)


def test_over_the_cap_only_the_oldest_synced_go_and_a_pending_one_never(
    path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [make(i) for i in range(9)]
    with caplog.at_level(logging.WARNING, logger="hwrcore.store"):
        with CorrectionStore(path, cap=5) as store:
            for c in items[:5]:
                store.add(c)
            store.mark_synced([items[1].id, items[3].id])
            store.add(items[5])
            store.add(items[6])
            store.add(items[7])
            # 1 and 3 (synced, oldest first); then every row is pending and the store grows.
            assert [c.id for c in store.all()] == [items[i].id for i in (0, 2, 4, 5, 6, 7)]
            assert store.stats()["evicted"] == {"synced": 2, "pending": 0}
            assert store.pending_count() == 6
            # One warning a minute at most: the first drop at once, the second one later.
            assert (
                len(_warnings(caplog)) == 1
                and "dropped the 1 oldest synced" in _warnings(caplog)[0]
            )
            store.mark_synced([items[0].id, items[2].id])
            monkeypatch.setattr(store_module, "EVICTION_LOG_SECONDS", 0.0)
            store.add(items[8])  # 7 rows would be 2 over the cap: both synced ones go
            # The warning counts what the log was not told yet: 3 (1 earlier + these 2).
            assert "dropped the 3 oldest synced corrections (4 since" in _warnings(caplog)[-1]
            assert [c.id for c in store.all()] == [items[i].id for i in (4, 5, 6, 7, 8)]
    assert _dropped_in_log(caplog) == 4
    assert not any("[[" in w or items[0].id in w for w in _warnings(caplog))  # never the drawing
    with CorrectionStore(path, cap=3) as store:  # a smaller cap on open drops no pending one
        assert [c.id for c in store.all()] == [items[i].id for i in (4, 5, 6, 7, 8)]
        store.mark_synced([items[4].id, items[5].id, items[6].id])
    with CorrectionStore(path, cap=3) as store:
        assert [c.id for c in store.all()] == [items[i].id for i in (6, 7, 8)]


def test_flooding_past_the_cap_evicts_only_synced_ones_and_the_log_counts_exactly(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    synced = [make(i) for i in range(10)]
    flood = [make(100 + i) for i in range(25)]
    with caplog.at_level(logging.WARNING, logger="hwrcore.store"):
        with CorrectionStore(path, cap=10, fsync=False) as store:
            for c in synced:
                store.add(c)
            store.mark_synced(c.id for c in synced)
            for c in flood:
                store.add(c)
            assert [c.id for c in store.all()] == [c.id for c in flood]
            assert store.pending_count() == 25 and store.stats()["evicted"]["synced"] == 10
        # The first drop is logged at once, the other nine when the store closes.
        assert len(_warnings(caplog)) == 2
        assert _dropped_in_log(caplog) == 10
    with CorrectionStore(path, cap=10) as store:
        assert {c.id for c in store.pending()} == {c.id for c in flood}


def test_the_pending_limit_refuses_a_new_correction_and_writes_nothing(path: Path) -> None:
    items = [make(i) for i in range(5)]
    with CorrectionStore(path, pending_limit=3) as store:
        for c in items[:3]:
            store.add(c)
        seq, journal = store.stats()["seq"], path.with_name(path.name + ".journal").stat().st_size
        with pytest.raises(StoreError) as exc:
            store.add(items[3])
        assert isinstance(exc.value, StoreFull) and exc.value.code == "store_full"
        assert "3 corrections not yet sent to the school's server" in exc.value.message
        assert "connect it to sync" in exc.value.message
        assert store.stats()["seq"] == seq and store.get(items[3].id) is None
        assert path.with_name(path.name + ".journal").stat().st_size == journal
        store.add(items[0])  # a retry of a stored one is still a no-op, not an error
        assert store.mark_synced([items[0].id]) == 1
        store.add(items[3])  # room again once one is synced
        with pytest.raises(StoreFull):
            store.add(items[4])
        assert store.stats()["pending_limit"] == 3
    with CorrectionStore(path, pending_limit=3) as store:
        assert [c.id for c in store.all()] == [c.id for c in items[:4]]
        assert store.pending_count() == 3


def test_pending_rows_give_the_upload_form_oldest_first_skipping_excluded(path: Path) -> None:
    items = [make(i) for i in range(5)]
    items[4] = make(4, embedding=None, strokes=None, predicted=None, confidence=None)
    with CorrectionStore(path) as store:
        for c in items:
            store.add(c)
        store.set_embeddings("digits-9", {items[1].id: np.ones(8, np.float32)})
        store.mark_synced([items[2].id])
        rows = store.pending_rows(10, exclude={items[0].id})
        assert [r.id for r in rows] == [items[i].id for i in (1, 3, 4)]
        assert [r.id for r in store.pending_rows(2)] == [items[0].id, items[1].id]
        assert store.pending_rows(0) == []
    one, three, four = rows
    image = np.frombuffer(base64.b64decode(three.image), dtype="<f4").reshape(28, 28)
    assert np.array_equal(image, items[3].image)
    assert json.loads(three.strokes) == items[3].strokes and json.loads(four.strokes) is None
    assert (three.label, three.predicted, three.confidence) == (
        items[3].label,
        items[3].predicted,
        items[3].confidence,
    )
    assert (three.model_version, three.created) == (items[3].model_version, items[3].created)
    assert three.updated >= three.created
    emb = np.frombuffer(base64.b64decode(three.embedding), dtype="<f4")  # type: ignore[arg-type]
    assert np.array_equal(emb, items[3].embedding) and three.embedding_version == "digits-0"
    assert one.embedding_version == "digits-9"
    assert (four.embedding, four.embedding_version, four.predicted, four.confidence) == (
        None,
        None,
        None,
        None,
    )


def test_close_leaves_a_complete_snapshot_and_an_empty_journal(path: Path) -> None:
    items = [make(i) for i in range(4)]
    store = CorrectionStore(path)
    for c in items:
        store.add(c)
    store.close()
    store.close()
    with pytest.raises(StoreError):
        store.add(make(9))
    assert path.with_name(path.name + ".journal").stat().st_size == 0
    with h5py.File(path, "r") as f:
        assert list(f["id"].asstr()[:]) == [c.id for c in items]
    with CorrectionStore(path) as store:
        assert len(store) == 4
        assert store.stats()["recovered"]["source"] == "snapshot"


def test_changes_after_a_kill_are_replayed_from_the_journal(path: Path) -> None:
    with CorrectionStore(path) as store:
        first = make(0)
        store.add(first)
    ids = kill_after_adding(path, 5)
    assert [c.id for c in read_store(path)] == [first.id, *ids]
    with CorrectionStore(path) as store:
        assert [c.id for c in store.all()] == [first.id, *ids]
        assert store.get(ids[3]).label == "3"  # type: ignore[union-attr]
        assert store.stats()["recovered"]["replayed"] == 5


@pytest.mark.parametrize("tail", [b"\x00", b"HWJ1\xff\xff", b"garbage" * 50, "torn"])
def test_a_torn_or_garbage_journal_tail_is_ignored(path: Path, tail: bytes | str) -> None:
    ids = kill_after_adding(path, 4)
    journal = path.with_name(path.name + ".journal")
    data = journal.read_bytes()
    if tail == "torn":  # a record cut short, as a power cut mid-write leaves it: never acked
        data += encode_record(5, {"op": "add", "id": str(uuid.uuid4())})[:-7]
    else:
        data += tail  # type: ignore[operator]
    journal.write_bytes(data)
    assert [c.id for c in read_store(path)] == ids
    with CorrectionStore(path, compact_every=100) as store:
        assert [c.id for c in store.all()] == ids
        assert store.stats()["recovered"]["torn_bytes"] > 0
        extra = make(50)
        store.add(extra)
    with CorrectionStore(path) as store:
        assert [c.id for c in store.all()] == [*ids, extra.id]


def test_a_damaged_record_mid_journal_loses_only_that_record(path: Path) -> None:
    ids = kill_after_adding(path, 5)
    journal = path.with_name(path.name + ".journal")
    data = bytearray(journal.read_bytes())
    # Flip a byte inside the third record's payload.
    third = scan_journal(bytes(data)).records[2][1]
    pos = data.find(third["id"].encode())
    data[pos] ^= 0xFF
    journal.write_bytes(bytes(data))
    with CorrectionStore(path) as store:
        assert [c.id for c in store.all()] == ids[:2] + ids[3:]
        rec = store.stats()["recovered"]
        assert rec["damaged_bytes"] > 0 and rec["missing"] == 1
    assert scan_journal(journal.read_bytes()).skipped == 0  # rewritten clean by compaction


def test_a_corrupt_snapshot_falls_back_to_the_backup_and_the_journals(path: Path) -> None:
    first = [make(i) for i in range(5)]
    second = [make(i) for i in range(5, 8)]
    with CorrectionStore(path) as store:
        for c in first:
            store.add(c)
    with CorrectionStore(path) as store:
        for c in second:
            store.add(c)
    assert path.with_name(path.name + ".bak").exists()
    with open(path, "r+b") as f:
        f.write(b"\x00" * 4096)
    with CorrectionStore(path) as store:
        assert [c.id for c in store.all()] == [c.id for c in first + second]
        assert store.stats()["recovered"]["source"] == "backup"
    assert path.with_name(path.name + ".corrupt").exists()
    with h5py.File(path, "r") as f:
        assert len(f["id"]) == 8


def test_with_no_readable_snapshot_or_backup_the_journals_rebuild_the_store(path: Path) -> None:
    items = [make(i) for i in range(4)]
    with CorrectionStore(path) as store:
        for c in items:
            store.add(c)
    for snap in (path, path.with_name(path.name + ".bak")):
        snap.write_bytes(snap.read_bytes()[:1000])  # truncated
    with CorrectionStore(path) as store:
        assert [c.id for c in store.all()] == [c.id for c in items]
        assert store.stats()["recovered"]["source"] == "journal"
        assert_same(store.get(items[2].id), items[2])


def test_the_snapshot_opens_with_plain_h5py_with_the_documented_schema(path: Path) -> None:
    with CorrectionStore(path) as store:
        for i in range(3):
            store.add(make(i))
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == DATASETS
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["kind"] == KIND
        assert f.attrs["journal_seq"] == 3
        assert {len(f[k]) for k in DATASETS} == {3}
        assert f["image"].shape == (3, 28, 28) and f["image"].dtype == np.float32
        for k in ("confidence", "created", "updated"):
            assert f[k].dtype == np.float64
        assert f["synced"].dtype == bool
        assert h5py.check_string_dtype(f["id"].dtype) is not None
        assert str(uuid.UUID(f["id"].asstr()[0])) == f["id"].asstr()[0]


def test_an_empty_store_has_a_readable_snapshot_from_the_start(path: Path) -> None:
    store = CorrectionStore(path)
    try:
        with h5py.File(path, "r") as f:
            assert f["image"].shape == (0, 28, 28) and len(f["embedding"]) == 0
        assert len(store) == 0 and store.pending() == [] and store.pending_count() == 0
        assert store.newest(10) == []
    finally:
        store.close()


def test_concurrent_adds_from_threads_lose_nothing(path: Path) -> None:
    per_thread, threads = 40, 6
    made = [[make(t * 100 + i) for i in range(per_thread)] for t in range(threads)]
    # A small compaction threshold makes background compactions race with the adds.
    store = CorrectionStore(path, compact_every=25)
    errors: list[BaseException] = []

    def work(items: list[Correction]) -> None:
        try:
            for c in items:
                store.add(c)
                store.add(c)
        except BaseException as e:  # collected and re-raised in the test's thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(m,)) for m in made]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    want = {c.id for m in made for c in m}
    assert {c.id for c in store.all()} == want and len(store) == len(want)
    assert {c.id for c in read_store(path)} == want
    store.close()
    with h5py.File(path, "r") as f:
        assert set(f["id"].asstr()[:]) == want


def test_embeddings_made_again_by_a_new_model_survive_a_kill_and_compaction(path: Path) -> None:
    a, b, c = make(0), make(1, embedding=None), make(2)
    gone = str(uuid.uuid4())
    new = {x.id: np.full(8, i + 0.5, np.float32) for i, x in enumerate((a, b))}
    store = CorrectionStore(path, fsync=False, compact_every=100_000)
    for x in (a, b, c):
        store.add(x)
    assert store.set_embeddings("9.9.9", {**new, gone: np.ones(8, np.float32)}) == 2
    # Not closed: the change lives in the journal alone, as after a power cut.
    state = {x.id: x for x in read_store(path)}
    store.close()
    for got in (state, {x.id: x for x in read_store(path)}):  # journal replay, then snapshot
        for x in (a, b):
            assert got[x.id].embedded_by == "9.9.9" and got[x.id].model_version == x.model_version
            assert np.array_equal(got[x.id].embedding, new[x.id])
        assert got[c.id].embedded_by == c.model_version
        assert np.array_equal(got[c.id].embedding, c.embedding)
        assert gone not in got
    with h5py.File(path, "r") as f:
        assert list(f["embedding_version"].asstr()[:]) == ["9.9.9", "9.9.9", ""]


def test_set_embeddings_splits_large_batches_and_refuses_bad_vectors(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "EMBEDDED_PER_RECORD", 2)
    with CorrectionStore(path, fsync=False, compact_every=100_000) as store:
        items = [make(i) for i in range(5)]
        for x in items:
            store.add(x)
        seq = store.stats()["seq"]
        vecs = {x.id: np.full(4, i, np.float32) for i, x in enumerate(items)}
        assert store.set_embeddings("2.0.0", vecs) == 5
        assert store.stats()["seq"] == seq + 3
        for bad in (np.zeros((2, 2), np.float32), np.array([np.nan], np.float32)):
            with pytest.raises(InvalidCorrection):
                store.set_embeddings("2.0.1", {items[0].id: bad})
        with pytest.raises(InvalidCorrection):
            store.set_embeddings("", vecs)
        assert store.stats()["seq"] == seq + 3
        assert all(x.embedded_by == "2.0.0" for x in store.all())


def test_a_snapshot_without_embedding_versions_reads_as_embedded_by_its_model(
    path: Path,
) -> None:
    a = make(0)
    with CorrectionStore(path) as store:
        store.add(a)
    with h5py.File(path, "a") as f:  # a file written before the dataset existed
        del f["embedding_version"]
    with CorrectionStore(path) as store:
        assert_same(store.get(a.id), a)
        assert store.get(a.id).embedded_by == a.model_version


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "not-a-uuid"},
        {"id": str(uuid.uuid4()).upper()},
        {"label": ""},
        {"image": np.zeros((28, 27), np.float32)},
        {"image": np.full((28, 28), 2.0, np.float32)},
        {"image": np.full((28, 28), np.nan, np.float32)},
        {"confidence": float("nan")},
        {"created": "yesterday"},
        {"strokes": [[[1, float("inf")]]]},
        {"embedding": np.zeros((2, 2), np.float32)},
    ],
)
def test_an_invalid_correction_is_refused_and_nothing_is_written(path: Path, bad: dict) -> None:
    with CorrectionStore(path, fsync=False) as store:
        seq = store.stats()["seq"]
        with pytest.raises(InvalidCorrection):
            store.add(make(0, **bad))
        assert len(store) == 0 and store.stats()["seq"] == seq


def test_a_correction_over_the_journal_record_limit_is_refused_not_written_then_lost(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replay skips a record over the limit, so writing one would lose it at the next open.
    monkeypatch.setattr(journal_module, "MAX_RECORD_BYTES", 15_000)
    kept = make(0)
    with CorrectionStore(path, fsync=False) as store:
        store.add(kept)
        with pytest.raises(InvalidCorrection, match="limit"):
            store.add(make(1, strokes=[[[i % 2 * 10.5, i * 1.5] for i in range(1_200)]]))
        assert len(store) == 1 and store.stats()["seq"] == 1
    assert [c.id for c in read_store(path)] == [kept.id]


def test_the_journal_framing_round_trips_and_filters_unknown_operations() -> None:
    records = [(1, {"op": "add", "x": 1}), (2, {"op": "rename", "x": 2}), (7, {"op": "drop"})]
    data = b"".join(encode_record(seq, p) for seq, p in records)
    assert scan_journal(data).records == records
    only = scan_journal(data, ops=("add", "drop"))
    assert only.records == [records[0], records[2]] and only.skipped > 0 and only.torn == 0
    with pytest.raises(ValueError):
        encode_record(3, {"op": "add", "x": float("nan")})


def test_a_second_open_of_the_same_store_is_refused(path: Path) -> None:
    with CorrectionStore(path):
        with pytest.raises(StoreError) as err:
            CorrectionStore(path, lock_timeout=0.2)
        assert err.value.code == "store_locked"
    with CorrectionStore(path, lock_timeout=0.2) as store:
        assert len(store) == 0


def test_a_snapshot_of_a_newer_schema_is_refused_and_left_alone(path: Path) -> None:
    with CorrectionStore(path) as store:
        store.add(make(0))
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    before = path.read_bytes()
    with pytest.raises(StoreError) as err:
        CorrectionStore(path)
    assert err.value.code == "store_schema"
    assert path.read_bytes() == before


def test_stats_report_counts_sizes_and_recovery(path: Path) -> None:
    with CorrectionStore(path, cap=10) as store:
        for i in range(3):
            store.add(make(i))
        store.mark_synced([store.all()[0].id])
        s = store.stats()
    assert (s["count"], s["pending"], s["cap"], s["path"]) == (3, 2, 10, str(path))
    assert s["bytes"] >= s["snapshot_bytes"] + s["journal_bytes"] > 0
    assert s["journal_records"] == 4 and s["recovered"]["source"] == "new"
    rec = recover(path)
    rec.close()
    assert rec.seq == 4


def test_a_failed_compaction_loses_nothing_and_is_retried(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = [make(i) for i in range(6)]
    store = CorrectionStore(path, compact_every=3)
    blocker = path.with_name(path.name + ".tmp")
    blocker.mkdir()  # the snapshot's temporary file cannot be created
    try:
        with caplog.at_level(logging.ERROR, logger="hwrcore.store"):
            for c in items:
                store.add(c)
            deadline = time.monotonic() + 10
            while not any("compaction" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the background compaction never reported"
                time.sleep(0.02)
        with pytest.raises(OSError):
            store.compact()
        assert len(store) == 6 and [c.id for c in read_store(path)] == [c.id for c in items]
    finally:
        blocker.rmdir()
    store.close()
    assert store.stats()["last_compaction"]["rows"] == 6
    with h5py.File(path, "r") as f:
        assert list(f["id"].asstr()[:]) == [c.id for c in items]
