# ruff: noqa: F811 - the database fixtures of tests/pg.py are imported by name
"""The sync server's API and registry on a real database: SQLite and a real PostgreSQL cluster."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from hwrcore import release as rel
from sync_server import db
from sync_server.app import close_app, create_app
from sync_server.config import load_config
from sync_server.devices import DeviceError, add_device, new_token, revoke_device
from sync_server.registry import Registry, RegistryError
from tests import versions
from tests.pg import database_url, pg_cluster, pg_url  # noqa: F401 - SQLite and PostgreSQL
from tests.sync_server_helpers import MODELS_DIR, image_b64, item, new_version

ADMIN = "admin-secret-for-tests"


def make_app(tmp_path: Path, database_url: str, **settings: object):
    config = load_config(
        env={"HWR_SYNC_ADMIN_TOKEN": ADMIN},
        overrides={
            "data_dir": tmp_path / "server",
            "database_url": database_url,
            "models_dir": MODELS_DIR,
            "rate_burst": 10_000,
            "release_poll_interval": 3600.0,  # the tests poll by hand
            **settings,
        },
    )
    return create_app(config)


@pytest.fixture
def app(tmp_path: Path, database_url: str):
    a = make_app(tmp_path, database_url)
    yield a
    close_app(a)


@pytest.fixture
def client(app):
    return app.test_client()


def st(app):
    return app.extensions["hwr_sync"]


def device(app, name: str = "room-1") -> dict[str, str]:
    """Headers of a newly added device."""
    return {"Authorization": f"Bearer {add_device(st(app).engine, name)}"}


def post(client, headers, items):
    r = client.post("/api/v1/corrections", json={"corrections": items}, headers=headers)
    assert r.status_code == 200, r.json
    return [res["status"] for res in r.json["results"]], r.json["results"]


def stored_rows(app):
    with db.reading(st(app).engine) as conn:
        return conn.execute(select(db.corrections)).all()


# -- schema and corrections ---------------------------------------------------------------------
def test_migrations_apply_and_are_idempotent(app):
    engine = st(app).engine
    db.migrate(engine)  # a second start changes nothing
    names = set(inspect(engine).get_table_names())
    assert {"devices", "corrections", "models", "releases", "alembic_version"} <= names
    with db.reading(engine) as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"


def test_corrections_are_stored_once_and_replays_are_duplicates(app, client):
    h = device(app)
    batch = [item(), item(mode="char", label="a"), item(strokes=None, embedding=None)]
    assert post(client, h, batch)[0] == ["stored"] * 3
    assert post(client, h, batch)[0] == ["duplicate"] * 3  # the same outcomes, nothing changes
    # updated is not content: a later edit time alone is still a duplicate
    assert post(client, h, [{**batch[0], "updated": batch[0]["updated"] + 60}])[0] == ["duplicate"]
    rows = stored_rows(app)
    assert sorted(r.uuid for r in rows) == sorted(i["id"] for i in batch)
    row = next(r for r in rows if r.uuid == batch[0]["id"])
    assert row.label == "7" and len(row.image) == 784 * 4 and row.model_version == versions.digits()
    assert json.loads(row.strokes) == batch[0]["strokes"]


def test_changed_content_and_another_devices_uuid_are_conflicts(app, client):
    a, b = device(app, "a"), device(app, "b")
    original = item()
    assert post(client, a, [original])[0] == ["stored"]
    statuses, results = post(client, a, [{**original, "label": "1"}])
    assert statuses == ["conflict"] and results[0]["error"]["code"] == "conflict"
    statuses, results = post(client, b, [original])  # the same content, under another device
    assert statuses == ["conflict"] and results[0]["error"]["code"] == "conflict"
    rows = stored_rows(app)
    assert len(rows) == 1 and rows[0].label == "7"  # never overwritten
    # the same UUID twice in one batch: first stored, then duplicate or conflict
    twin = item()
    assert post(client, a, [twin, twin, {**twin, "label": "2"}])[0] == [
        "stored",
        "duplicate",
        "conflict",
    ]


BAD_ITEMS = {
    "invalid_message": "not an object",
    "invalid_id": {"id": "NOT-A-UUID"},
    "upper-case uuid": {"id": str(uuid.uuid4()).upper()},
    "invalid_mode": {"mode": "kanji"},
    "invalid_label": {"label": "A"},  # a letter for the digit model
    "non-canonical label": {"mode": "char", "label": "o"},  # 'O' is the class
    "invalid_image": {"image": image_b64(n=783)},
    "not base64": {"image": "%%%"},
    "nan image": {"image": image_b64(float("nan"))},
    "out_of_range": {"image": image_b64(1.5)},
    "invalid_drawing": {"strokes": [[[1, 2, 3]]]},
    "too_many_strokes": {"strokes": [[[1.0, 2.0]]] * 65},
    "too_many_points": {"strokes": [[[1.0, 2.0]] * 4097]},
    "confidence": {"confidence": 1.5},
    "created": {"created": "yesterday"},
    "model": {"model": "digits"},
}
CODES = {
    "upper-case uuid": "invalid_id",
    "non-canonical label": "invalid_label",
    "not base64": "invalid_image",
    "nan image": "invalid_image",
    "confidence": "out_of_range",
    "created": "invalid_field",
    "model": "invalid_field",
}


def test_malformed_items_are_rejected_with_a_code_and_never_block_the_others(app, client):
    cases = sorted(BAD_ITEMS)
    bad = [BAD_ITEMS[c] if isinstance(BAD_ITEMS[c], str) else item(**BAD_ITEMS[c]) for c in cases]
    good = [item(), item(mode="char", label="t", strokes=None)]
    statuses, results = post(client, device(app), [good[0], *bad, good[1]])
    assert statuses == ["stored", *["rejected"] * len(bad), "stored"]
    codes = {c: r["error"]["code"] for c, r in zip(cases, results[1:-1], strict=True)}
    assert codes == {c: CODES.get(c, c) for c in cases}
    assert all(r["error"]["message"] for r in results[1:-1])
    assert results[2]["id"] == bad[1]["id"]  # a rejected item is named by its id when it has one
    assert sorted(r.uuid for r in stored_rows(app)) == sorted(g["id"] for g in good)


def test_concurrent_uploads_of_the_same_uuids_store_each_once(app, client):
    h = device(app)
    batch = [item() for _ in range(30)]
    outcomes: list[list[str]] = []

    def upload() -> None:
        c = app.test_client()
        outcomes.append(post(c, h, batch)[0])

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 6
    for i in range(len(batch)):
        column = [o[i] for o in outcomes]
        assert column.count("stored") == 1 and column.count("duplicate") == 5
    assert len(stored_rows(app)) == 30


def test_batches_over_100_items_or_1_mib_are_413(app, client):
    h = device(app)
    r = client.post(
        "/api/v1/corrections", json={"corrections": [item() for _ in range(101)]}, headers=h
    )
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"
    big = {"corrections": [item(predicted="x" * 1000)], "padding": "y" * (1 << 20)}
    r = client.post("/api/v1/corrections", json=big, headers=h)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"
    assert stored_rows(app) == []


def test_bad_bodies_are_400_in_the_error_shape(app, client):
    h = {**device(app), "Content-Type": "application/json"}
    r = client.post("/api/v1/corrections", data=b"{not json", headers=h)
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_json"
    r = client.post("/api/v1/corrections", json={"corrections": []}, headers=h)
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_message"
    r = client.post("/api/v1/heartbeat", json={"pending": "many"}, headers=h)
    assert r.status_code == 400 and set(r.json) == {"error"}


# -- authentication, limits, errors -------------------------------------------------------------
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
ROUTES = [
    ("post", "/api/v1/corrections"),
    ("post", "/api/v1/heartbeat"),
    ("get", "/api/v1/models"),
    ("get", "/api/v1/models/digits/{shipped}"),
    ("get", "/api/v1/notify"),  # the WebSocket upgrade
    ("get", "/api/v1/admin/summary"),
]


def test_a_new_token_replaces_the_old_and_reactivates_a_revoked_device(app, client):
    old = device(app, "room-1")
    revoke_device(st(app).engine, "room-1")
    token = new_token(st(app).engine, "room-1")
    assert client.get("/api/v1/models", headers=old).status_code == 401
    fresh = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/models", headers=fresh).status_code == 200
    assert token not in old["Authorization"] and len(token) == 43
    with pytest.raises(DeviceError) as e:
        new_token(st(app).engine, "nobody")
    assert e.value.code == "unknown_device"


def test_missing_wrong_or_revoked_tokens_get_the_same_401_on_every_route(app, client):
    revoked = device(app, "gone")
    revoke_device(st(app).engine, "gone")
    cases = [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}, revoked]
    bodies = set()
    for method, route in ROUTES:
        path = route.format(shipped=versions.digits())
        for headers in cases:
            if path.endswith("/notify"):
                headers = {**headers, **UPGRADE}
            send = getattr(client, method)
            with send(path, headers=headers, json={"corrections": [item()]}) as r:
                assert r.status_code == 401, (path, headers)
                assert r.headers["WWW-Authenticate"] == "Bearer"
                bodies.add(json.dumps(r.json, sort_keys=True))
    assert len(bodies) == 1 and json.loads(bodies.pop())["error"]["code"] == "unauthorized"
    assert stored_rows(app) == []


def test_admin_summary_needs_the_admin_token_and_counts_distinct_uuids(app, client):
    h = device(app)
    assert client.get("/api/v1/admin/summary", headers=h).status_code == 401  # a device token
    batch = [item(), item(), item(mode="char", label="Q")]
    post(client, h, batch)
    post(client, h, batch)
    r = client.get("/api/v1/admin/summary", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    assert r.json == {"devices": 1, "corrections": {"digit": 2, "char": 1}}


def test_admin_tokens_cannot_be_guessed_faster_than_at_the_dashboard(app, client):
    """Wrong admin tokens count with the dashboard's failed sign-ins: five from one address
    in a minute, and every admin door answers 429 for the rest of it, the right token too."""
    good = {"Authorization": f"Bearer {ADMIN}"}
    assert client.get("/api/v1/admin/summary").status_code == 401  # no token: not a guess
    wrong = [
        client.get(path, headers={"Authorization": f"Bearer guess-{i}"}).status_code
        for i, path in enumerate(["/api/v1/admin/summary", "/api/v1/admin/jobs"] * 3)
    ]
    assert wrong == [401] * 5 + [429]
    r = client.get("/api/v1/admin/summary", headers=good)
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert client.get("/api/v1/admin/tunnel", headers=good).status_code == 429
    # The devices' own routes are not the admin's: they go on.
    assert client.get("/api/v1/models", headers=device(app)).status_code == 200


def test_integers_too_long_for_a_float_are_refused_not_failed(app, client):
    """A 400-digit integer where a number belongs is out of range for that item or field
    (the rest of the batch goes on), never an overflow answered 500."""
    h = {**device(app), "Content-Type": "application/json"}
    huge = "1" + "0" * 400

    def raw(path: str, body: str):
        return client.post(path, data=body, headers=h)

    good, bad, slow = item(), item(confidence=0.625), item(created=1234567890.5)
    text = json.dumps({"corrections": [good, bad, slow]})
    text = text.replace('"confidence": 0.625', f'"confidence": {huge}')
    text = text.replace('"created": 1234567890.5', f'"created": -{huge}')
    r = raw("/api/v1/corrections", text)
    assert r.status_code == 200, r.json
    assert [x["status"] for x in r.json["results"]] == ["stored", "rejected", "rejected"]
    stroke = item(strokes=[[[1.0, 2.0], [3.0, 4.0]]])
    r = raw("/api/v1/corrections", json.dumps({"corrections": [stroke]}).replace("1.0", huge, 1))
    assert r.json["results"][0]["error"]["code"] == "out_of_range"
    r = raw("/api/v1/heartbeat", f'{{"clock": {huge}}}')
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_message"
    withdrawal = (
        f'{{"withdrawals": [{{"id": "{good["id"]}", "withdrawn": {huge}, "by": "pupil"}}]}}'
    )
    r = raw("/api/v1/corrections/withdraw", withdrawal)
    assert r.status_code == 200 and r.json["results"][0]["status"] == "rejected"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = client.get("/api/v1/admin/jobs/" + "9" * 25, headers=admin)
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    for query in ("limit=-1", "limit=" + "9" * 25, "limit=1001", "offset=-5"):
        r = client.get("/api/v1/admin/quarantine?" + query, headers=admin)
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_field", query
    assert client.get("/api/v1/admin/quarantine?limit=1000", headers=admin).status_code == 200


def test_rate_limit_answers_429_with_retry_after(tmp_path, database_url):
    a = make_app(tmp_path, database_url, rate_burst=3, rate_per_second=0.2)
    try:
        c, h = a.test_client(), device(a)
        statuses = [c.get("/api/v1/models", headers=h).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = c.get("/api/v1/models", headers=h)
        assert r.json["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 5
        other = device(a, "other")  # buckets are per device
        assert c.get("/api/v1/models", headers=other).status_code == 200
    finally:
        close_app(a)


def test_unknown_paths_and_methods_answer_the_error_shape(app, client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    r = client.get("/api/v1/corrections", headers=device(app))
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = client.get("/api/v1/models/digits/9.9.9", headers=device(app, "b"))
    assert r.status_code == 404 and set(r.json["error"]) == {"code", "message"}


# -- heartbeat, releases, model files -----------------------------------------------------------
def test_heartbeat_is_recorded_and_names_the_current_releases(app, client):
    h = device(app)
    body = {
        "models": {"digit": {"name": "digits", "version": versions.digits()}},
        "pending": 4,
        "software": "0.1.0",
        "clock": 1.5e9,
        "tunnel_url": None,
        "later_field": "ignored",
    }
    r = client.post("/api/v1/heartbeat", json=body, headers=h)
    assert r.status_code == 200
    assert r.json["models"]["digit"] == {
        "name": "digits",
        "version": versions.digits(),
        "sequence": 1,
    }
    assert r.json["models"]["char"]["name"] == "characters"
    with db.reading(st(app).engine) as conn:
        row = conn.execute(select(db.devices)).one()
    assert row.hb_pending == 4 and row.hb_clock == 1.5e9 and row.last_seen is not None
    assert json.loads(row.hb_models) == body["models"]


def test_the_pending_count_falls_with_each_upload_not_at_the_next_heartbeat(app, client):
    h = device(app)
    client.post("/api/v1/heartbeat", json={"pending": 3}, headers=h)
    batch = [item(label="1"), item(label="2")]
    assert (
        client.post("/api/v1/corrections", json={"corrections": batch}, headers=h).status_code
        == 200
    )
    client.post("/api/v1/corrections", json={"corrections": batch[:1]}, headers=h)  # a duplicate

    def pending() -> int:
        with db.reading(st(app).engine) as conn:
            return conn.execute(select(db.devices.c.hb_pending)).scalar()

    assert pending() == 0  # 3 - 2 stored - 1 duplicate (the device marks both synced)
    client.post("/api/v1/corrections", json={"corrections": [item(label="3")]}, headers=h)
    assert pending() == 0  # never below zero


def test_models_answer_signed_releases_with_an_etag(app, client, tmp_path):
    h = device(app)
    r = client.get("/api/v1/models", headers=h)
    assert r.status_code == 200 and r.headers["ETag"]
    key = st(app).key.public_key()
    for mode, entry in r.json["models"].items():
        release = rel.verify_release(entry["release"], key, mode=mode)
        assert entry["url"] == f"/api/v1/models/{release.name}/{release.version}"
        assert release.sequence == 1
    again = client.get("/api/v1/models", headers={**h, "If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    st(app).registry.publish(new_version(tmp_path / "new"), by="test")
    changed = client.get("/api/v1/models", headers={**h, "If-None-Match": r.headers["ETag"]})
    assert changed.status_code == 200 and changed.headers["ETag"] != r.headers["ETag"]
    assert changed.json["models"]["digit"]["release"]["release"]["version"] == versions.digits(1)


def test_model_file_has_etag_304_and_range_206(app, client):
    h = device(app)
    data = (MODELS_DIR / "digits.tflite").read_bytes()
    sha = json.loads((MODELS_DIR / "digits.json").read_text())["sha256"]
    url = f"/api/v1/models/digits/{versions.digits()}"
    with client.get(url, headers=h) as r:
        assert r.status_code == 200 and r.data == data
        assert r.headers["ETag"] == f'"{sha}"'
    with client.get(url, headers={**h, "If-None-Match": f'"{sha}"'}) as r:
        assert r.status_code == 304
    with client.get(url, headers={**h, "Range": "bytes=1000-"}) as r:
        assert r.status_code == 206 and r.data == data[1000:]
        assert r.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"


def test_a_relative_data_dir_serves_published_files(tmp_path, monkeypatch):
    """``--data-dir school`` names a folder of the directory the server was started in."""
    monkeypatch.chdir(tmp_path)
    config = load_config(
        env={"HWR_SYNC_ADMIN_TOKEN": ADMIN},
        overrides={"data_dir": "school", "models_dir": MODELS_DIR, "release_poll_interval": 3600.0},
    )
    assert config.data_dir == tmp_path / "school"
    a = create_app(config)
    try:
        published = st(a).registry.publish(new_version(tmp_path / "new"), by="test")
        with a.test_client().get(
            f"/api/v1/models/digits/{published.version}", headers=device(a)
        ) as r:
            assert r.status_code == 200, r.data[:200]
            stored = tmp_path / "school" / "models" / "digits" / f"{published.version}.tflite"
            assert r.data == stored.read_bytes()
    finally:
        close_app(a)


def test_publish_and_rollback_make_growing_signed_sequences(app, tmp_path):
    registry: Registry = st(app).registry
    key = st(app).key.public_key()
    first = registry.current("digits")
    assert first.version == versions.digits() and first.sequence == 1
    published = registry.publish(new_version(tmp_path / "new"), by="teacher")
    assert (published.version, published.sequence) == (versions.digits(1), 2)
    r2 = rel.verify_release(published.document, key, trusted_sequence=1, mode="digit")
    stored = Path(st(app).config.data_dir) / "models" / "digits" / f"{versions.digits(1)}.tflite"
    rel.verify_file(r2, stored)
    back = registry.rollback("digits", versions.digits(), by="teacher")
    assert (back.version, back.sequence) == (versions.digits(), 3)
    r3 = rel.verify_release(back.document, key, trusted_sequence=2, mode="digit")
    assert r3.sha256 == first.document["release"]["sha256"]
    with pytest.raises(rel.ReplayedRelease):  # the device refuses the older release now
        rel.verify_release(published.document, key, trusted_sequence=3)
    assert registry.current("characters").sequence == 1  # sequences are per model
    with pytest.raises(RegistryError) as e:  # the same version with other bytes
        registry.publish(new_version(tmp_path / "other", salt=b"different"), by="teacher")
    assert e.value.code == "version_exists"
    with pytest.raises(RegistryError) as e:
        registry.rollback("digits", "0.0.1", by="teacher")
    assert e.value.code == "unknown_version"
    assert registry.current("digits").sequence == 3
    assert sorted(m["version"] for m in registry.models() if m["current"]) == sorted(
        [versions.characters(), versions.digits()]
    )


def test_a_publish_from_another_process_reaches_the_notifier(app, tmp_path):
    """The CLI writes the database with its own engine; the server's poll sees the release."""
    s = st(app)
    other = db.open_database(s.config.db_url)
    try:
        Registry(other, s.config.data_dir, s.key).publish(new_version(tmp_path / "n"), by="cli")
    finally:
        other.dispose()
    messages = s.notifier.poll()
    assert messages == [
        {
            "type": "release",
            "mode": "digit",
            "name": "digits",
            "version": versions.digits(1),
            "sequence": 2,
        }
    ]
    assert s.notifier.poll() == []  # once only


# -- configuration and the signing key (no database) --------------------------------------------
@pytest.mark.parametrize(
    "setting,value,match",
    [
        ("port", 70000, "port must be 0-65535, got 70000"),
        ("workers", 0, "workers must be at least 1, got 0"),
        ("rate_per_second", 0.0, "rate_per_second must be positive, got 0.0"),
        ("eval_limit", -1, "eval_limit must be 0 or more, got -1"),
        ("heldout_share", 1.5, r"heldout_share must lie in \(0, 1\]"),
        ("log_level", "loud", "log_level must be"),
    ],
)
def test_config_names_the_setting_it_cannot_run_with(tmp_path, setting, value, match):
    from sync_server.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(env={}, overrides={setting: value, "data_dir": tmp_path})


def test_config_layers_refuse_unknown_keys_and_mask_secrets(tmp_path):
    from sync_server.config import ConfigError

    toml = tmp_path / "sync.toml"
    toml.write_text('[sync]\nport = 8200\nlog_level = "debug"\n')
    env = {"HWR_SYNC_PORT": "8300", "HWR_SYNC_ADMIN_TOKEN": "s3cret-of-16-chars"}
    c = load_config(toml, env=env, overrides={"port": 8400, "data_dir": tmp_path})
    assert (c.port, c.log_level, c.admin_secret()) == (8400, "debug", "s3cret-of-16-chars")
    assert c.db_url == f"sqlite:///{tmp_path / 'sync.db'}"
    assert load_config(toml, env=env).port == 8300
    shown = c.to_dict()
    assert shown["admin_token"] == "(set)" and "s3cret" not in json.dumps(shown)
    # A short admin token is refused: it opens the dashboard, perhaps through a public tunnel.
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_config(env={"HWR_SYNC_ADMIN_TOKEN": "a" * 15}).admin_secret()
    pg = load_config(env={"HWR_SYNC_DATABASE_URL": "postgresql+psycopg://u:pw@h/db"})
    assert pg.to_dict()["database_url"] == "postgresql+psycopg://u:***@h/db"
    token_file = tmp_path / "admin.token"
    token_file.write_text("from-a-file-0123456789\n")
    token_file.chmod(0o604)
    with pytest.raises(ConfigError, match=r"mode 0604: every user .* chmod 600"):
        load_config(env={"HWR_SYNC_ADMIN_TOKEN_FILE": str(token_file)}).admin_secret()
    token_file.chmod(0o600)
    assert load_config(env={"HWR_SYNC_ADMIN_TOKEN_FILE": str(token_file)}).admin_secret() == (
        "from-a-file-0123456789"
    )
    with pytest.raises(ConfigError, match="set admin_token or admin_token_file, not both"):
        load_config(
            env={"HWR_SYNC_ADMIN_TOKEN_FILE": str(token_file), "HWR_SYNC_ADMIN_TOKEN": "a" * 20}
        )
    toml.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_config(toml, env={})
    with pytest.raises(ConfigError, match="unknown setting 'max_bach'"):
        load_config(env={"HWR_SYNC_MAX_BACH": "5"})
    with pytest.raises(ConfigError, match="cannot be a flag"):
        load_config(env={}, overrides={"admin_token": "x"})
    with pytest.raises(ConfigError, match="port"):
        load_config(env={"HWR_SYNC_PORT": "99999"})


def test_signing_key_is_made_0600_kept_and_refused_when_loose(tmp_path):
    from sync_server.keys import SigningKeyError, key_path, load_or_create_key

    first = load_or_create_key(tmp_path)
    assert key_path(tmp_path).stat().st_mode & 0o777 == 0o600
    assert rel.public_key_text(load_or_create_key(tmp_path)) == rel.public_key_text(first)
    key_path(tmp_path).chmod(0o640)
    with pytest.raises(SigningKeyError, match="0640"):
        load_or_create_key(tmp_path)


# -- confirmations and withdrawals ------------------------------------------------------------
def test_a_confirmation_is_stored_as_such_and_its_kind_is_part_of_its_content(app, client):
    h = device(app)
    confirmation = item(kind="confirmation", label="7", predicted="7")
    statuses, _ = post(client, h, [confirmation, item()])
    assert statuses == ["stored", "stored"]
    assert post(client, h, [confirmation])[0] == ["duplicate"]
    assert post(client, h, [{**confirmation, "kind": "correction"}])[0] == ["conflict"]
    kinds = {r.uuid: r.kind for r in stored_rows(app)}
    assert kinds[confirmation["id"]] == "confirmation" and sorted(kinds.values()) == [
        "confirmation",
        "correction",
    ]
    statuses, results = post(
        client, h, [item(kind="confirmation", label="7", predicted="1"), item(kind="other")]
    )
    assert statuses == ["rejected", "rejected"]
    assert [r["error"]["code"] for r in results] == ["invalid_label", "invalid_field"]


def test_withdrawals_mark_a_devices_own_corrections_and_a_replay_changes_nothing(app, client):
    h, other = device(app), device(app, "room-2")
    mine, theirs = item(), item()
    post(client, h, [mine])
    post(client, other, [theirs])

    def withdraw(headers, *items):
        r = client.post(
            "/api/v1/corrections/withdraw", json={"withdrawals": list(items)}, headers=headers
        )
        return r.status_code, r.json

    now = time.time()
    status, body = withdraw(
        h,
        {"id": mine["id"], "withdrawn": now, "by": "pupil"},
        {"id": theirs["id"], "withdrawn": now, "by": "pupil"},  # another device's
        {"id": str(uuid.uuid4()), "withdrawn": now, "by": "teacher"},  # never sent
        {"id": mine["id"], "withdrawn": now, "by": "somebody"},
        "not an object",
    )
    assert status == 200
    assert [r["status"] for r in body["results"]] == [
        "withdrawn",
        "unknown",
        "unknown",
        "rejected",
        "rejected",
    ]
    rows = {r.uuid: r for r in stored_rows(app)}
    assert rows[mine["id"]].withdrawn == pytest.approx(now) and rows[mine["id"]].withdrawn_by == (
        "pupil"
    )
    assert rows[theirs["id"]].withdrawn is None and len(rows) == 2  # nothing deleted
    again = withdraw(h, {"id": mine["id"], "withdrawn": now + 5, "by": "teacher"})[1]
    assert [r["status"] for r in again["results"]] == ["duplicate"]
    assert {r.uuid: r for r in stored_rows(app)}[mine["id"]].withdrawn_by == "pupil"
    assert withdraw(h)[0] == 400
    assert withdraw({"Authorization": "Bearer wrong"}, {"id": mine["id"]})[0] == 401
    many = [{"id": str(uuid.uuid4()), "withdrawn": now, "by": "pupil"}] * 101
    assert withdraw(h, *many)[0] == 413
