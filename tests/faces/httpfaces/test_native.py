"""The native API over real HTTP, with a real device syncing into SQLite and PostgreSQL stores."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tap_emulator.store import DeviceRecord, open_store

from .conftest import Cloud, wait_for

ADMIN, SUPERVISOR, ANONYMOUS = 65535, 65534, 0


async def add_synced_device(store_url: str, serial: str) -> None:
    """A second device in the store, written as the sync task writes one (upsert_device)."""
    store = await open_store(store_url)
    try:
        await store.upsert_device(DeviceRecord(serial, "TAP EMU", "1.0", datetime.now(UTC)))
    finally:
        await store.close()


async def test_a_synced_device_is_listed_with_its_public_access_groups(cloud: Cloud) -> None:
    listing = (await cloud.http.get("/api/v1/devices")).json()
    assert [d["serial"] for d in listing["items"]] == [cloud.serial]
    assert listing["next_cursor"] is None
    detail = (await cloud.http.get(f"/api/v1/devices/{cloud.serial}")).json()
    assert detail["model"] == "TAP 1.10 EMU" and detail["firmware"] == "1.118.0"
    groups = {g["group_id"]: g for g in detail["access_groups"]}
    assert {ADMIN, SUPERVISOR, ANONYMOUS} <= set(groups)
    assert groups[ADMIN]["name"] == "admin" and groups[ADMIN]["password_set"] is True
    assert groups[ADMIN]["is_profile"] is True
    text = (await cloud.http.get(f"/api/v1/devices/{cloud.serial}")).text.lower()
    for secret_field in ("stored_key", "server_key", "hash", '"password"', "key"):
        assert secret_field not in text


async def test_a_change_on_the_device_reaches_the_native_api(cloud: Cloud) -> None:
    await cloud.coap_put_name(SUPERVISOR, "renamed")

    def renamed(body: dict[str, list[dict[str, object]]]) -> bool:
        return any(g["group_id"] == SUPERVISOR and g["name"] == "renamed" for g in body["access_groups"])

    await wait_for(cloud.http, f"/api/v1/devices/{cloud.serial}", renamed)


async def test_sync_status_joins_the_store_and_the_devices_own_backlog(cloud: Cloud) -> None:
    status = (
        await wait_for(
            cloud.http, f"/api/v1/devices/{cloud.serial}/sync", lambda b: b["backlog"]["pending"] == 0
        )
    ).json()
    assert status["serial"] == cloud.serial
    assert status["access_groups"] >= 3 and status["newest_version"] >= 1
    assert status["backlog"]["delivered"] >= 3 and status["backlog"]["last_error"] is None
    missing = await cloud.http.get("/api/v1/devices/NOPE/sync")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_device_groups_crud_and_keyset_pages(cloud: Cloud) -> None:
    created = []
    for index in range(5):
        response = await cloud.http.post(
            "/api/v1/device-groups", json={"name": f"group {index}", "tags": ["t"]}
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    assert len({g["id"] for g in created}) == 5
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await cloud.http.get("/api/v1/device-groups", params=params)).json()
        assert len(page["items"]) <= 2
        seen.extend(g["id"] for g in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [g["id"] for g in created]
    first = created[0]["id"]
    patched = await cloud.http.patch(
        f"/api/v1/device-groups/{first}", json={"description": "d", "max_devices": 3}
    )
    assert patched.status_code == 200
    assert patched.json()["description"] == "d" and patched.json()["name"] == "group 0"
    assert patched.json()["max_devices"] == 3
    assert (await cloud.http.get(f"/api/v1/device-groups/{first}")).json() == patched.json()
    assert (await cloud.http.delete(f"/api/v1/device-groups/{first}")).status_code == 204
    gone = await cloud.http.get(f"/api/v1/device-groups/{first}")
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


async def test_membership_counts_and_is_refused_past_capacity(cloud: Cloud, store_url: str) -> None:
    await add_synced_device(store_url, "EMU-SECOND")
    group = (
        await cloud.http.post("/api/v1/device-groups", json={"name": "one seat", "max_devices": 1})
    ).json()
    joined = await cloud.http.put(f"/api/v1/device-groups/{group['id']}/devices/{cloud.serial}")
    assert joined.status_code == 200 and joined.json()["serial"] == cloud.serial
    again = await cloud.http.put(f"/api/v1/device-groups/{group['id']}/devices/{cloud.serial}")
    assert again.status_code == 200  # idempotent
    full = await cloud.http.put(f"/api/v1/device-groups/{group['id']}/devices/EMU-SECOND")
    assert full.status_code == 409 and full.json()["code"] == "capacity_exceeded"
    after = (await cloud.http.get(f"/api/v1/device-groups/{group['id']}")).json()
    assert after["device_count"] == 1
    members = (await cloud.http.get(f"/api/v1/device-groups/{group['id']}/devices")).json()
    assert [d["serial"] for d in members["items"]] == [cloud.serial]
    device = (await cloud.http.get(f"/api/v1/devices/{cloud.serial}")).json()
    assert device["device_groups"] == [group["id"]]
    unknown = await cloud.http.put(f"/api/v1/device-groups/{group['id']}/devices/NO-SUCH-DEVICE")
    assert unknown.status_code == 404
    assert (
        await cloud.http.delete(f"/api/v1/device-groups/{group['id']}/devices/{cloud.serial}")
    ).status_code == 204
    assert (await cloud.http.get(f"/api/v1/device-groups/{group['id']}")).json()["device_count"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/devices?limit=0", None),
        ("GET", "/api/v1/device-groups?limit=501", None),
        ("GET", "/api/v1/device-groups?cursor=not-a-cursor", None),
        ("POST", "/api/v1/device-groups", {"description": "no name"}),
        ("POST", "/api/v1/device-groups", {"name": "x", "max_devices": -1}),
        ("POST", "/api/v1/device-groups", {"name": "x", "parent_id": "no-such-parent"}),
        ("PATCH", "/api/v1/device-groups/x", {"name": 5}),
    ],
)
async def test_bad_input_is_a_native_error(cloud: Cloud, method: str, path: str, body: object) -> None:
    response = await cloud.http.request(method, path, json=body)
    assert response.status_code in (400, 404), response.text
    assert set(response.json()) == {"code", "message"}
    listing = (await cloud.http.get("/api/v1/device-groups")).json()
    assert listing["items"] == []  # nothing half-written
