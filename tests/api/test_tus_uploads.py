"""Resumable uploads over tus 1.0 (SPEC §5.3) through the real app (inspection in a child).

The protocol's rules here, in process; an off-the-shelf client (tuspy) against a real
``graft serve`` in ``test_tus_client.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from app.config import Settings
from app.db.session import Database
from app.services.auth import create_key
from app.services.bootstrap import prepare
from app.services.uploads import ResumableUploads
from tests.api.conftest import TestClient, api_settings, create_app
from tests.fixtures import tiny_state_dict

TUS = {"Tus-Resumable": "1.0.0"}
PART = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return api_settings(tmp_path_factory, max_resumable_uploads_per_owner=50)


def saved(seed: int) -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_state_dict(seed), buf)
    return buf.getvalue()


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(client: TestClient, length: int, headers: dict[str, str] | None = None) -> str:
    r = client.post(
        "/v1/uploads",
        headers={**TUS, "Upload-Length": str(length), **(headers or {})},
    )
    assert r.status_code == 201, r.text
    assert r.headers["Tus-Resumable"] == "1.0.0"
    location = r.headers["Location"]
    assert location.startswith("http") and "/v1/uploads/" in location
    return "/v1/uploads/" + location.rsplit("/", 1)[-1]


def patch(
    client: TestClient, url: str, offset: int, data: bytes, **headers: str
) -> Any:  # an httpx.Response
    return client.patch(
        url, content=data, headers={**PART, "Upload-Offset": str(offset), **headers}
    )


def upload_in_parts(client: TestClient, data: bytes, parts: int, **meta: str) -> Any:
    url = create(client, len(data), {"Upload-Metadata": metadata(**meta)} if meta else None)
    step = -(-len(data) // parts)
    for offset in range(0, len(data), step):
        r = patch(client, url, offset, data[offset : offset + step])
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(min(offset + step, len(data)))
    return url, r


def uploads_dir(settings: Settings) -> Path:
    return settings.storage_dir / "tmp" / "tus"


def test_options_advertises_the_protocol(client: TestClient, settings: Settings) -> None:
    r = client.options("/v1/uploads")
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert set(r.headers["Tus-Extension"].split(",")) == {"creation", "termination", "checksum"}
    assert r.headers["Tus-Checksum-Algorithm"] == "sha256"
    assert r.headers["Tus-Max-Size"] == str(settings.max_upload_bytes)


def test_parts_make_the_same_record_as_a_plain_upload(client: TestClient) -> None:
    data = saved(1)
    url, last = upload_in_parts(client, data, 3, filename="tiny.pth")
    checkpoint_id = last.headers["Graft-Checkpoint"]
    assert last.headers["Graft-Checkpoint-Created"] == "true"
    status = client.get(url).json()
    assert status["complete"] and status["created"] and status["offset"] == len(data)
    record = status["checkpoint"]
    assert record["id"] == checkpoint_id
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["filename"] == "tiny.pth" and record["size"] == len(data)
    # The plain upload of the same bytes finds the very record (dedupe by sha256).
    plain = client.post("/v1/checkpoints?filename=tiny.pth", content=data)
    assert plain.status_code == 200
    assert plain.json() == record
    tensors = client.get(f"/v1/checkpoints/{checkpoint_id}/tensors").json()["data"]
    expected = tiny_state_dict(1)
    assert [t["key"] for t in tensors] == list(expected)
    assert [t["shape"] for t in tensors] == [list(v.shape) for v in expected.values()]
    head = client.head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Graft-Checkpoint"] == checkpoint_id
    # A complete upload takes nothing more.
    assert patch(client, url, len(data), b"").status_code == 409


def test_a_second_upload_of_the_same_bytes_finds_the_record(client: TestClient) -> None:
    data = saved(1)
    first = upload_in_parts(client, data, 1)[1].headers["Graft-Checkpoint"]
    url, last = upload_in_parts(client, data, 2)
    assert last.headers["Graft-Checkpoint"] == first
    assert last.headers["Graft-Checkpoint-Created"] == "false"
    assert client.get(url).json()["created"] is False


def test_protocol_refusals(client: TestClient, settings: Settings) -> None:
    data = saved(2)
    url = create(client, len(data))
    # No Tus-Resumable: 412 with the version served.
    untagged = {"Content-Type": PART["Content-Type"], "Upload-Offset": "0"}
    r = client.patch(url, content=data[:10], headers=untagged)
    assert r.status_code == 412 and r.headers["Tus-Version"] == "1.0.0"
    assert client.head(url).status_code == 412
    # Wrong body type: 415.
    wrong = {**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"}
    r = client.patch(url, content=data[:10], headers=wrong)
    assert r.status_code == 415 and r.json()["type"] == "unsupported-media-type"
    # Offsets must match.
    assert patch(client, url, 0, data[:100]).status_code == 204
    r = patch(client, url, 0, data[100:200])
    assert r.status_code == 409, r.text
    assert patch(client, url, 150, data[150:200]).status_code == 409
    # A part past the length: 413, nothing written.
    assert patch(client, url, 100, data[100:] + b"extra").status_code == 413
    assert client.head(url, headers=TUS).headers["Upload-Offset"] == "100"
    # No Upload-Length, a length over the cap, a deferred length, an empty file.
    assert client.post("/v1/uploads", headers=TUS).status_code == 400
    big = str(settings.max_upload_bytes + 1)
    r = client.post("/v1/uploads", headers={**TUS, "Upload-Length": big})
    assert r.status_code == 413 and r.json()["type"] == "too-large"
    r = client.post("/v1/uploads", headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status_code == 400
    assert client.post("/v1/uploads", headers={**TUS, "Upload-Length": "0"}).status_code == 400
    # An unusable file name.
    odd = {**TUS, "Upload-Length": "5", "Upload-Metadata": metadata(filename="a\x01b")}
    r = client.post("/v1/uploads", headers=odd)
    assert r.status_code == 400
    assert client.head("/v1/uploads/" + "0" * 32, headers=TUS).status_code == 404
    assert client.head("/v1/uploads/..", headers=TUS).status_code == 404


def test_a_part_that_fails_its_checksum_is_discarded(client: TestClient) -> None:
    data = saved(3)
    url = create(client, len(data))

    def checksum(part: bytes) -> str:
        return "sha256 " + base64.b64encode(hashlib.sha256(part).digest()).decode()

    half = len(data) // 2
    r = patch(client, url, 0, data[:half], **{"Upload-Checksum": checksum(data[:half])})
    assert r.status_code == 204
    r = patch(client, url, half, data[half:], **{"Upload-Checksum": checksum(b"other bytes")})
    assert r.status_code == 460, r.text
    assert r.json()["type"] == "checksum-mismatch"
    assert client.head(url, headers=TUS).headers["Upload-Offset"] == str(half)
    r = patch(client, url, half, data[half:], **{"Upload-Checksum": "md5 AAAA"})
    assert r.status_code == 400
    r = patch(client, url, half, data[half:], **{"Upload-Checksum": checksum(data[half:])})
    assert r.status_code == 204, r.text
    record = client.get(url).json()["checkpoint"]
    # The carried digest is the whole file's, though one part was sent twice.
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_refused_file_leaves_nothing(client: TestClient, settings: Settings) -> None:
    data = b"not a checkpoint at all" * 10
    url = create(client, len(data))
    r = patch(client, url, 0, data)
    assert r.status_code == 422, r.text
    assert client.head(url, headers=TUS).status_code == 404
    assert not (uploads_dir(settings) / url.rsplit("/", 1)[-1]).exists()


def test_termination_deletes_the_staged_bytes(client: TestClient, settings: Settings) -> None:
    data = saved(4)
    url = create(client, len(data))
    assert patch(client, url, 0, data[:50]).status_code == 204
    folder = uploads_dir(settings) / url.rsplit("/", 1)[-1]
    assert (folder / "data").stat().st_size == 50
    r = client.delete(url, headers=TUS)
    assert r.status_code == 204 and r.headers["Tus-Resumable"] == "1.0.0"
    assert not folder.exists()
    assert client.head(url, headers=TUS).status_code == 404
    assert patch(client, url, 50, data[50:]).status_code == 404


def test_an_upload_resumes_after_a_restart(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(tmp_path_factory)
    prepare(settings)
    data = saved(5)
    with TestClient(create_app(settings)) as first:
        url = create(first, len(data))
        assert patch(first, url, 0, data[:333]).status_code == 204
    # The orphan sweep of a new start spares resumable uploads.
    with TestClient(create_app(settings)) as second, caplog.at_level("INFO"):
        assert second.head(url, headers=TUS).headers["Upload-Offset"] == "333"
        r = patch(second, url, 333, data[333:])
        assert r.status_code == 204, r.text
        record = second.get(url).json()["checkpoint"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    # The digest was not in the new process's memory: the 333 bytes were hashed once.
    assert "rehashing 333 bytes" in caplog.text


def test_owners_see_only_their_uploads(tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = api_settings(tmp_path_factory, auth="keys")
    prepare(settings)
    database = Database(settings.database_url)
    tokens = {}
    with database.transaction() as session:
        for owner in ("alice", "bob"):
            _, token = create_key(session, owner=owner, scopes=["read", "write"])
            tokens[owner] = {"Authorization": f"Bearer {token}"}
    database.dispose()
    data = saved(6)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/uploads", headers={**TUS, "Upload-Length": "9"}).status_code == 401
        assert client.options("/v1/uploads").status_code == 204  # discovery needs no key
        url = create(client, len(data), tokens["alice"])
        for call in (client.head, client.get, client.delete):
            assert call(url, headers={**TUS, **tokens["bob"]}).status_code == 404
        r = patch(client, url, 0, data, **tokens["bob"])
        assert r.status_code == 404
        r = patch(client, url, 0, data, **tokens["alice"])
        assert r.status_code == 204, r.text
        record = client.get(url, headers=tokens["alice"]).json()["checkpoint"]
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert (
            client.get(f"/v1/checkpoints/{record['id']}", headers=tokens["bob"]).status_code == 404
        )


def test_caps_and_expiry(tmp_path: Path) -> None:
    uploads = ResumableUploads(tmp_path / "tus", max_per_owner=2, expiry_seconds=60)
    first = uploads.create("alice", 10, {})
    uploads.create("alice", 10, {})
    with pytest.raises(Exception) as refused:
        uploads.create("alice", 10, {})
    assert getattr(refused.value, "type", None) == "too-many-uploads"
    uploads.create("bob", 10, {})  # another owner's cap is their own
    assert uploads.expire(now=time.time()) == 0
    with uploads.locked(first.id):  # a part still arriving: not abandoned, however late
        assert uploads.expire(now=time.time() + 61) == 2
    assert uploads.folder(first.id).is_dir()
    assert uploads.expire(now=time.time() + 61) == 1
    assert not uploads.folder(first.id).exists()
    assert not (tmp_path / "tus" / first.id).exists()
    assert list((tmp_path / "tus").iterdir()) == []


def test_the_maintenance_loop_expires_abandoned_uploads(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = api_settings(
        tmp_path_factory, resumable_upload_expiry_seconds=2.0, maintenance_seconds=0.1
    )
    prepare(settings)
    with TestClient(create_app(settings)) as client:
        url = create(client, 100)
        assert patch(client, url, 0, b"x" * 10).status_code == 204
        folder = uploads_dir(settings) / url.rsplit("/", 1)[-1]
        assert folder.is_dir()
        deadline = time.monotonic() + 30
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not folder.exists()
        assert client.head(url, headers=TUS).status_code == 404
