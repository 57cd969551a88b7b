"""The APP-service face (seed 003) over real HTTP: app_id + app_key, time_used, symbolic 400 errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from .conftest import APP_SERVICE, Cloud


def assert_ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["time_used"], int) and body["time_used"] >= 0
    return body


def assert_error(response: httpx.Response, symbol: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == symbol and isinstance(body["time_used"], int)


async def create(http: httpx.AsyncClient, account: str, name: str, status: int = 1, sequence: int = 1) -> str:
    body = {"devgroup_name": name, "devgroup_status": status, "devgroup_sequence": sequence}
    created = assert_ok(await http.post(f"/device-groups/account/{account}", json=body, headers=APP_SERVICE))
    assert set(created) == {"time_used", "devgroup_id"}
    uuid.UUID(created["devgroup_id"])  # ids are UUIDs
    return str(created["devgroup_id"])


async def owned(http: httpx.AsyncClient, account: str) -> list[dict[str, Any]]:
    body = assert_ok(await http.get(f"/device-groups/account/{account}", headers=APP_SERVICE))
    return list(body["devicegroups"])


async def shared(http: httpx.AsyncClient, account: str) -> list[str]:
    body = assert_ok(await http.get(f"/device-groups/share/account/{account}", headers=APP_SERVICE))
    return [g["devgroup_id"] for g in body["devicegroups"]]


@pytest.mark.parametrize("headers", [{}, {"app_id": "app-1"}, {"app_id": "app-1", "app_key": "wrong"}])
async def test_calls_need_the_apps_id_and_key(cloud: Cloud, headers: dict[str, str]) -> None:
    assert_error(
        await cloud.http.get("/device-groups/account/acct-1", headers=headers), "INVALID_APP_KEY", 401
    )


async def test_create_list_update_delete(cloud: Cloud) -> None:
    gid = await create(cloud.http, "acct-1", "baby-group", status=1, sequence=3)
    assert await owned(cloud.http, "acct-1") == [
        {"devgroup_id": gid, "devgroup_name": "baby-group", "devgroup_status": 1, "devgroup_sequence": 3}
    ]
    assert await owned(cloud.http, "acct-2") == []
    update = {"devgroup_name": "renamed", "devgroup_status": 0, "devgroup_sequence": 4}
    body = assert_ok(
        await cloud.http.put(f"/device-groups/{gid}/account/acct-1", json=update, headers=APP_SERVICE)
    )
    assert set(body) == {"time_used"}
    assert (await owned(cloud.http, "acct-1"))[0]["devgroup_name"] == "renamed"
    assert_ok(await cloud.http.delete(f"/device-groups/{gid}/account/acct-1", headers=APP_SERVICE))
    assert await owned(cloud.http, "acct-1") == []


async def test_the_seeds_symbolic_errors(cloud: Cloud) -> None:
    gid = await create(cloud.http, "acct-1", "one")
    body = {"devgroup_name": "one", "devgroup_status": 1, "devgroup_sequence": 1}
    assert_error(
        await cloud.http.post("/device-groups/account/nobody", json=body, headers=APP_SERVICE),
        "INVALID_ACCOUNT_ID",
    )
    assert_error(
        await cloud.http.get("/device-groups/account/nobody", headers=APP_SERVICE), "INVALID_ACCOUNT_ID"
    )
    assert_error(
        await cloud.http.post("/device-groups/account/acct-1", json=body, headers=APP_SERVICE),
        "SAME_DEVICEGROUP_NAME",
    )
    other = await create(cloud.http, "acct-1", "two")
    rename = await cloud.http.put(f"/device-groups/{other}/account/acct-1", json=body, headers=APP_SERVICE)
    assert_error(rename, "SAME_DEVICEGROUP_NAME")
    missing = await cloud.http.put(
        f"/device-groups/{uuid.uuid4()}/account/acct-1", json=body, headers=APP_SERVICE
    )
    assert_error(missing, "INVALID_DEVICEGROUP_ID")
    assert_error(
        await cloud.http.delete(f"/device-groups/{gid}/account/nobody", headers=APP_SERVICE),
        "INVALID_ACCOUNT_ID",
    )


async def test_delete_is_refused_while_a_device_is_in_the_group(cloud: Cloud) -> None:
    gid = await create(cloud.http, "acct-1", "with-device")
    assert (await cloud.http.put(f"/api/v1/device-groups/{gid}/devices/{cloud.serial}")).status_code == 200
    refused = await cloud.http.delete(f"/device-groups/{gid}/account/acct-1", headers=APP_SERVICE)
    assert_error(refused, "DEVICES_STILL_EXIST_IN_THE_DEVICEGROUP")
    assert len(await owned(cloud.http, "acct-1")) == 1
    assert (await cloud.http.delete(f"/api/v1/device-groups/{gid}/devices/{cloud.serial}")).status_code == 204
    assert_ok(await cloud.http.delete(f"/device-groups/{gid}/account/acct-1", headers=APP_SERVICE))


async def test_shares_give_the_path_account_view_rights_all_or_nothing(cloud: Cloud) -> None:
    first = await create(cloud.http, "acct-1", "first")
    second = await create(cloud.http, "acct-1", "second")
    share = {"devgroups": [first, second]}
    assert_ok(await cloud.http.post("/device-groups/share/account/acct-2", json=share, headers=APP_SERVICE))
    assert sorted(await shared(cloud.http, "acct-2")) == sorted([first, second])
    again = await cloud.http.post(
        "/device-groups/share/account/acct-2", json={"devgroups": [first]}, headers=APP_SERVICE
    )
    assert_error(again, "SHARE_TO_SAME_ACCOUNT_ID")
    to_owner = await cloud.http.post(
        "/device-groups/share/account/acct-1", json={"devgroups": [first]}, headers=APP_SERVICE
    )
    assert_error(to_owner, "SHARE_TO_MYSELF")
    batch = {"devgroups": [first, str(uuid.uuid4())]}
    assert_error(
        await cloud.http.post("/device-groups/share/account/acct-3", json=batch, headers=APP_SERVICE),
        "INVALID_DEVICEGROUP_ID",
    )
    assert await shared(cloud.http, "acct-3") == []  # nothing of the failed batch was written
    assert_error(
        await cloud.http.post("/device-groups/share/account/nobody", json=share, headers=APP_SERVICE),
        "INVALID_ACCOUNT_ID",
    )
    unshare = await cloud.http.request(
        "DELETE", "/device-groups/share/account/acct-2", json={"devgroups": [first]}, headers=APP_SERVICE
    )
    assert_ok(unshare)
    assert await shared(cloud.http, "acct-2") == [second]


@pytest.mark.parametrize(
    "body",
    [
        {"devgroup_name": "a^b", "devgroup_status": 1, "devgroup_sequence": 1},
        {"devgroup_name": "a@b", "devgroup_status": 1, "devgroup_sequence": 1},
        {"devgroup_name": "it's", "devgroup_status": 1, "devgroup_sequence": 1},
        {"devgroup_name": "ok", "devgroup_status": 2, "devgroup_sequence": 1},
        {"devgroup_name": "ok", "devgroup_status": 1, "devgroup_sequence": "1"},
        {"devgroup_name": "ok", "devgroup_status": 1, "devgroup_sequence": 1.5},
        {"devgroup_name": "ok", "devgroup_status": 1},
        {"devgroup_name": "ok"},
        {},
    ],
)
async def test_invalid_fields_are_400_and_write_nothing(cloud: Cloud, body: dict[str, Any]) -> None:
    response = await cloud.http.post("/device-groups/account/acct-1", json=body, headers=APP_SERVICE)
    assert_error(response, "INVALID_PARAMETER")
    assert await owned(cloud.http, "acct-1") == []


async def test_an_account_changes_only_its_own_groups(cloud: Cloud) -> None:
    gid = await create(cloud.http, "acct-1", "mine")
    body = {"devgroup_name": "stolen", "devgroup_status": 1, "devgroup_sequence": 1}
    put = await cloud.http.put(f"/device-groups/{gid}/account/acct-2", json=body, headers=APP_SERVICE)
    assert_error(put, "INVALID_DEVICEGROUP_ID")
    delete = await cloud.http.delete(f"/device-groups/{gid}/account/acct-2", headers=APP_SERVICE)
    assert_error(delete, "INVALID_DEVICEGROUP_ID")
    assert [g["devgroup_name"] for g in await owned(cloud.http, "acct-1")] == ["mine"]
