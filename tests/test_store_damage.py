"""The store under damage and its new states: a damaged snapshot byte is detected and repaired
or counted, journal loss beyond a torn record is reported, withdrawn and confirmed rows, schema-1
files, and stroke bounds."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from hwrcore.journal import scan_journal
from hwrcore.store import (
    MAX_STROKES_BYTES,
    Correction,
    CorrectionStore,
    InvalidCorrection,
    read_store,
    recover,
    simplify_strokes,
)
from tests.test_store import kill_after_adding, make

FIXTURE = Path(__file__).parent / "fixtures" / "store_schema1"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "custom_digits.h5"


def two_generations(path: Path, n: int = 6) -> list[Correction]:
    """A store closed twice, so a backup and an old journal exist beside the snapshot."""
    items = [make(i) for i in range(n)]
    with CorrectionStore(path) as store:
        for c in items[: n // 2]:
            store.add(c)
    with CorrectionStore(path) as store:
        for c in items[n // 2 :]:
            store.add(c)
        store.mark_synced([items[0].id])
    return items


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


def truth(items: list[Correction]) -> dict[str, str]:
    return {c.id: c.label for c in items}


@pytest.mark.parametrize("what", ["label", "id", "strokes", "predicted", "model_version"])
def test_a_changed_text_byte_is_detected_and_repaired_from_the_backup(
    path: Path, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    items = two_generations(path)
    target = items[4]
    value = {
        "label": target.label,
        "id": target.id,
        "strokes": simplify_strokes(target.strokes),
        "predicted": target.predicted,
        "model_version": target.model_version,
    }[what]
    data = path.read_bytes()
    # The value as the heap stores it, next to the row's id, made unique by context.
    pos = data.find(value.encode()) if what in ("id", "strokes") else -1
    if pos < 0:
        with h5py.File(path, "r") as f:
            row = list(f["id"].asstr()[:]).index(target.id)
            assert f[what].asstr()[row] == value
        # Change the row's value the way a damaged heap byte would: same length, one char off.
        with h5py.File(path, "r+") as f:
            v = f[what].asstr()[row]
            f[what][row] = v[:-1] + chr(ord(v[-1]) ^ 1)
    else:
        flip(path, pos + len(value) // 2)
    with caplog.at_level(logging.ERROR, logger="hwrcore.store"):
        with CorrectionStore(path) as store:
            got = {c.id: c.label for c in store.all()}
            rec = store.stats()["recovered"]
    assert got == truth(items), "a damaged row was served or lost"
    assert rec["bad_rows"] == 1 and rec["repaired_rows"] == 1 and rec["rows_lost"] == 0
    assert any("failed their checksum" in r.getMessage() for r in caplog.records)


def test_a_label_changed_9_to_4_without_a_backup_is_dropped_and_counted(path: Path) -> None:
    c = make(9)
    with CorrectionStore(path) as store:
        store.add(c)
    for extra in (path.with_name(path.name + s) for s in (".bak", ".journal.old")):
        extra.unlink(missing_ok=True)
    with h5py.File(path, "r+") as f:
        assert f["label"].asstr()[0] == "9"
        f["label"][0] = "4"
    with CorrectionStore(path) as store:
        assert store.get(c.id) is None  # never served as the truth
        rec = store.stats()["recovered"]
        assert rec["bad_rows"] == 1 and rec["rows_lost"] == 1
    assert path.with_name(path.name + ".corrupt").exists()


@pytest.mark.parametrize("attr", ["journal_seq", "written", "rows"])
def test_a_damaged_attribute_is_detected_and_the_backup_used(path: Path, attr: str) -> None:
    items = two_generations(path)
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = f.attrs[attr] + 1
    with CorrectionStore(path) as store:
        assert {c.id: c.label for c in store.all()} == truth(items)
        assert store.stats()["recovered"]["source"] == "backup"


def test_every_sampled_byte_of_a_snapshot_is_detected_or_harmless(path: Path) -> None:
    """Flip bytes all over the file: the result is always the truth or counted as loss."""
    items = two_generations(path, 4)
    want = {c.id: (c.label, c.predicted, json.dumps(c.strokes)) for c in items}
    snapshot = path.read_bytes()
    backup = {p: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}
    positions = list(range(0, len(snapshot), max(1, len(snapshot) // 150)))
    served_wrong = []
    for pos in positions:
        for p, data in backup.items():
            p.write_bytes(data)
        path.with_name(path.name + ".corrupt").unlink(missing_ok=True)
        flip(path, pos)
        try:
            rec = recover(path)
        except Exception as e:  # a refusal (newer schema) is safe: it serves nothing
            assert "schema" in str(e), (pos, e)
            continue
        try:
            rows = {r.id: r for r in rec.rows.values()}
            for i, r in rows.items():
                if i not in want or (r.label, r.predicted) != want[i][:2]:
                    served_wrong.append(pos)
            if set(rows) != set(want):
                assert rec.rows_lost > 0 or rec.lost_records > 0, pos
        finally:
            rec.close()
    assert not served_wrong, f"damaged bytes served as truth at {served_wrong[:5]}"


def test_truncating_the_journal_to_half_is_reported_as_loss(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with CorrectionStore(path) as store:
        store.add(make(0))
    ids = kill_after_adding(path, 46)
    journal = path.with_name(path.name + ".journal")
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) // 2])
    kept = scan_journal(journal.read_bytes()).records
    # Records differ in length (their ids and compressed drawings), so half the bytes hold
    # about half the records: 22 or 23 of 46 in practice.
    lost = 46 - len(kept)
    assert 18 <= lost <= 28, lost
    with caplog.at_level(logging.WARNING, logger="hwrcore.store"):
        with CorrectionStore(path) as store:
            rec = store.stats()["recovered"]
            assert len(store) == 1 + len(kept)
            assert rec["lost_records"] == lost
            assert rec["journal"] == "damaged"
            assert f"lost {lost} acknowledged records" in store.stats()["problems"][0]
            store.add(make(1))  # sequence numbers go on past the lost ones
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{lost} acknowledged records are lost" in m for m in errors), errors
    assert not any("torn record" in r.getMessage() for r in caplog.records)
    with CorrectionStore(path) as store:  # reported once, then the files are clean again
        assert store.stats()["recovered"]["lost_records"] == 0
    assert ids


def test_a_crc_failure_followed_by_records_is_damage(path: Path) -> None:
    kill_after_adding(path, 5)
    journal = path.with_name(path.name + ".journal")
    data = bytearray(journal.read_bytes())
    data[scan_journal(bytes(data)).offsets[1] + 30] ^= 0xFF
    journal.write_bytes(bytes(data))
    with CorrectionStore(path) as store:
        rec = store.stats()["recovered"]
        assert len(store) == 4 and rec["lost_records"] == 1 and rec["journal"] == "damaged"


def test_withdraw_keeps_the_row_leaves_personalisation_and_waits_for_sync(path: Path) -> None:
    a, b, c = make(0), make(1), make(2)
    with CorrectionStore(path) as store:
        for x in (a, b, c):
            store.add(x)
        store.mark_synced([a.id])
        assert store.withdraw(a.id, "teacher") and store.withdraw(b.id, "pupil")
        assert not store.withdraw(a.id, "teacher") and not store.withdraw(
            str(uuid.uuid4()), "pupil"
        )
        with pytest.raises(InvalidCorrection):
            store.withdraw(c.id, "someone")
        assert [v.id for v in store.newest_vectors(10)] == [c.id]
        # a was sent: its withdrawal is pending; b was not: it is never sent at all.
        assert [w.id for w in store.pending_withdrawals()] == [a.id]
        assert [p.id for p in store.pending_rows(10)] == [c.id] and store.pending_count() == 1
        s = store.stats()
        assert (s["withdrawn"], s["pending_withdrawals"], s["corrections"]) == (2, 1, 1)
    state = {x.id: x for x in read_store(path)}  # after close: from the snapshot
    assert state[a.id].withdrawn_by == "teacher" and state[b.id].withdrawn_by == "pupil"
    with CorrectionStore(path, compact_every=1000) as store:
        assert [w.id for w in store.pending_withdrawals()] == [a.id]
        assert store.mark_withdrawal_synced([a.id, b.id]) == 1
        assert store.pending_withdrawals() == []
    ids = kill_after_adding(path, 1)  # the journal alone carries it too
    with CorrectionStore(path) as store:
        assert store.get(a.id).withdrawal_synced and store.get(ids[0]) is not None  # type: ignore[union-attr]
        assert store.stats()["pending_withdrawals"] == 0


def test_a_withdrawal_of_a_row_acknowledged_in_flight_becomes_pending(path: Path) -> None:
    a = make(0)
    with CorrectionStore(path) as store:
        store.add(a)
        picked = store.pending_rows(5)  # an upload is in flight
        assert store.withdraw(a.id, "pupil")
        assert store.pending_rows(5) == [] and store.pending_withdrawals() == []
        assert store.mark_synced([p.id for p in picked]) == 1  # the server had it after all
        assert [w.id for w in store.pending_withdrawals()] == [a.id]


def test_confirmations_are_stored_synced_counted_apart_and_not_personalised(path: Path) -> None:
    conf = make(0, label="3", predicted="3", kind="confirmation")
    corr = make(1)
    with CorrectionStore(path) as store:
        store.add(conf)
        store.add(corr)
        with pytest.raises(InvalidCorrection):
            store.add(make(2, label="3", predicted="5", kind="confirmation"))
        with pytest.raises(InvalidCorrection):
            store.add(make(3, kind="guess"))
        s = store.stats()
        assert (s["count"], s["corrections"], s["confirmations"]) == (2, 1, 1)
        assert [v.id for v in store.newest_vectors(10)] == [corr.id]
        assert {p.id: p.kind for p in store.pending_rows(10)} == {
            conf.id: "confirmation",
            corr.id: "correction",
        }
    with h5py.File(path, "r") as f:
        assert list(f["kind"].asstr()[:]) == ["confirmation", "correction"]
    assert read_store(path)[0].kind == "confirmation"


def test_a_schema_1_store_written_by_the_old_code_opens(tmp_path: Path) -> None:
    for p in FIXTURE.iterdir():
        shutil.copy(p, tmp_path / p.name)
    path = tmp_path / "custom_digits.h5"
    expected = json.loads((tmp_path / "expected.json").read_text())
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == 1
    with CorrectionStore(path) as store:
        got = store.all()
        assert [c.id for c in got] == [e["id"] for e in expected]
        for c, e in zip(got, expected, strict=True):
            assert (c.label, c.synced, c.strokes, c.predicted) == (
                e["label"],
                e["synced"],
                e["strokes"],
                e["predicted"],
            )
            assert c.kind == "correction" and c.withdrawn is None
            assert (c.embedding is not None) == e["has_embedding"]
        assert store.stats()["recovered"]["unverified_rows"] == 3
        assert store.withdraw(expected[2]["id"], "teacher")
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == 2 and "row_crc32" in f


def test_strokes_are_simplified_rounded_and_bounded() -> None:
    line = [[[i * 0.5 + 0.0123, 100 + i * 0.25] for i in range(400)]]  # one straight stroke
    assert json.loads(simplify_strokes(line)) == [[[0, 100], [199.5, 199.8]]]
    assert simplify_strokes(None) == "null"
    rng = np.random.default_rng(0)
    scribble = [rng.uniform(0, 280, (4096, 2)).tolist()]  # passes the edge's point limit
    with pytest.raises(InvalidCorrection) as e:
        simplify_strokes(scribble)
    assert e.value.code == "drawing_too_large" and str(MAX_STROKES_BYTES) in e.value.message
    for bad in ([[[1, float("nan")]]], [[[1, 2, 3]]], "strokes", [[[1e9, 0]]]):
        with pytest.raises(InvalidCorrection):
            simplify_strokes(bad)


def test_strokes_stay_on_disk_and_start_up_reads_none(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [make(i) for i in range(5)]
    with CorrectionStore(path) as store:
        for c in items:
            store.add(c)
    import hwrcore.snapshot as snapshot_module

    reads: list[int] = []
    real = snapshot_module.SnapshotSource.read
    monkeypatch.setattr(
        snapshot_module.SnapshotSource,
        "read",
        lambda self, keys: reads.append(len(keys)) or real(self, keys),
    )
    with CorrectionStore(path) as store:
        assert len(store.newest_vectors(10)) == 5 and reads == []
        assert store.get(items[2].id).strokes == json.loads(simplify_strokes(items[2].strokes))  # type: ignore[union-attr]
        assert reads == [1]


def test_healthz_is_degraded_and_counts_the_loss_after_a_truncated_journal(tmp_path: Path) -> None:
    from edge.app import close_app, create_app, store_path
    from edge.config import EdgeConfig
    from tests.models import require_models

    web = tmp_path / "web"
    (web / "static").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>canvas</title>")
    data = tmp_path / "data"
    path = store_path(data, "digit")
    kill_after_adding(path, 10)
    journal = path.with_name(path.name + ".journal")
    journal.write_bytes(journal.read_bytes()[: journal.stat().st_size // 2])
    lost = 10 - len(scan_journal(journal.read_bytes()).records)
    app = create_app(EdgeConfig(data_dir=data, models_dir=require_models(), web_dir=web))
    try:
        body = app.test_client().get("/healthz").get_json()
    finally:
        close_app(app)
    assert body["status"] == "degraded"
    assert body["corrections"]["digit"]["recovered"]["lost_records"] == lost >= 5
    assert any(f"lost {lost} acknowledged records" in r for r in body["reasons"]), body["reasons"]
