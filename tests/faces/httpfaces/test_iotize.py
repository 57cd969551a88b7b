"""The IoTize cloud face (seed 001) over real HTTP: auth header, Connection pages, schemas, admin rights."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import IOTIZE_ALICE, IOTIZE_BOB, Cloud

GROUP_REQUIRED = {"id", "userId"}
GROUP_FIELDS = {
    "id", "userId", "name", "description", "administratorRole", "defaultRole", "createdAt", "updatedAt",
    "createdBy", "updatedBy", "parent", "ownerId", "numberOfDevices", "numberOfNotifications",
    "numberOfConnectors",
}  # fmt: skip


async def create(
    http: httpx.AsyncClient, name: str, headers: dict[str, str] = IOTIZE_ALICE, **params: str
) -> Any:
    response = await http.post(
        "/group", json={"name": name, "description": "d", "tags": ["x"]}, headers=headers, params=params
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"message"} and isinstance(body["message"], str) and body["message"]
    return str(body["message"])


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "wrong"}, {"Authorization": "Bearer iotize-alice"}]
)
async def test_calls_need_the_access_token_itself(cloud: Cloud, headers: dict[str, str]) -> None:
    assert "Unauthorized" in assert_error(await cloud.http.get("/user/groups", headers=headers))


async def test_create_read_and_list_groups_with_next_tokens(cloud: Cloud) -> None:
    parent = await create(cloud.http, "parent")
    assert set(parent) == GROUP_FIELDS
    assert parent["userId"] == "alice@example.com" and parent["numberOfDevices"] == 0
    child = await create(cloud.http, "child", parentId=parent["id"])
    assert child["parent"] == parent["id"]
    third = await create(cloud.http, "third")
    read = (await cloud.http.get("/group", params={"groupId": child["id"]}, headers=IOTIZE_ALICE)).json()
    assert read == [child]
    first_page = (await cloud.http.get("/user/groups", params={"limit": 2}, headers=IOTIZE_ALICE)).json()
    assert [g["id"] for g in first_page["items"]] == [parent["id"], child["id"]]
    second = await cloud.http.get(
        "/user/groups", params={"limit": 2, "nextToken": first_page["nextToken"]}, headers=IOTIZE_ALICE
    )
    assert [g["id"] for g in second.json()["items"]] == [third["id"]]
    assert "nextToken" not in second.json()  # the last page has none
    bobs = (await cloud.http.get("/user/groups", headers=IOTIZE_BOB)).json()
    assert bobs == {"items": []}


async def test_only_a_group_admin_updates_invites_and_manages_keys(cloud: Cloud) -> None:
    group = await create(cloud.http, "alices")
    gid = group["id"]
    assert_error(
        await cloud.http.put("/group", json={"groupId": gid, "name": "bobs now"}, headers=IOTIZE_BOB)
    )
    invite = {"email": "bob@example.com", "groupId": gid, "roleId": "member"}
    assert_error(await cloud.http.put("/group/invite", json=invite, headers=IOTIZE_BOB))
    answer = await cloud.http.put("/group/invite", json=invite, headers=IOTIZE_ALICE)
    assert answer.status_code == 200 and set(answer.json()) == {"message", "value"}
    users = (await cloud.http.get("/group/users", params={"groupId": gid}, headers=IOTIZE_ALICE)).json()
    roles = {u["email"]: u["role"]["id"] for u in users["items"]}
    assert roles == {"alice@example.com": "admin", "bob@example.com": "member"}
    assert [g["id"] for g in (await cloud.http.get("/user/groups", headers=IOTIZE_BOB)).json()["items"]] == [
        gid
    ]
    # A member still may not update; once made admin, it may.
    assert_error(await cloud.http.put("/group", json={"groupId": gid, "name": "x"}, headers=IOTIZE_BOB))
    promote = {"userId": "bob@example.com", "groupId": gid, "roleId": "admin"}
    relation = await cloud.http.put("/group/user", json=promote, headers=IOTIZE_ALICE)
    assert relation.status_code == 200 and relation.json()["role"]["id"] == "admin"
    updated = await cloud.http.put("/group", json={"groupId": gid, "name": "shared"}, headers=IOTIZE_BOB)
    assert updated.status_code == 200 and updated.json()["name"] == "shared"
    assert updated.json()["description"] == "d"  # partial update
    left = await cloud.http.delete("/group/user", params={"groupId": gid}, headers=IOTIZE_BOB)
    assert left.json()["value"] is True
    assert (await cloud.http.get("/user/groups", headers=IOTIZE_BOB)).json() == {"items": []}


async def test_external_api_keys_one_per_type_and_never_shown(cloud: Cloud) -> None:
    gid = (await create(cloud.http, "keys"))["id"]
    key = {"groupId": gid, "type": "sigfox", "token": "very-secret-token", "name": "k1"}
    created = await cloud.http.post("/group/apiKey", json=key, headers=IOTIZE_ALICE)
    assert created.status_code == 200
    assert {"groupId", "name", "type"} <= set(created.json()) and "very-secret-token" not in created.text
    assert_error(await cloud.http.post("/group/apiKey", json=key, headers=IOTIZE_ALICE))
    assert_error(await cloud.http.post("/group/apiKey", json={**key, "type": "other"}, headers=IOTIZE_BOB))
    renamed = await cloud.http.put(
        "/group/apiKey", json={"groupId": gid, "type": "sigfox", "name": "k2"}, headers=IOTIZE_ALICE
    )
    assert renamed.json()["name"] == "k2"
    params = {"groupId": gid, "type": "sigfox"}
    deleted = await cloud.http.delete("/group/apiKey", params=params, headers=IOTIZE_ALICE)
    assert deleted.json() == {"message": "api key deleted", "value": True}
    assert_error(await cloud.http.delete("/group/apiKey", params=params, headers=IOTIZE_ALICE))


async def test_group_devices_and_roles(cloud: Cloud) -> None:
    group = await create(cloud.http, "with device")
    joined = await cloud.http.put(f"/api/v1/device-groups/{group['id']}/devices/{cloud.serial}")
    assert joined.status_code == 200
    devices = (
        await cloud.http.get("/group/devices", params={"groupId": group["id"]}, headers=IOTIZE_ALICE)
    ).json()
    assert [d["deviceId"] for d in devices["items"]] == [cloud.serial]
    device = devices["items"][0]
    required = {"deviceId", "groupId", "name", "type", "network", "originalId", "createdAt", "updatedAt"}
    assert required <= set(device) and device["groupId"] == group["id"]
    read = (await cloud.http.get("/group", params={"groupId": group["id"]}, headers=IOTIZE_ALICE)).json()
    assert read[0]["numberOfDevices"] == 1
    roles = (await cloud.http.get("/group/roles", headers=IOTIZE_ALICE)).json()
    assert {"admin", "member"} <= {r["id"] for r in roles["items"]}
    assert all(set(r) == {"id", "name", "description", "permissions", "removable"} for r in roles["items"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/group", {"json": {"name": 5}}),
        ("POST", "/group", {"content": b"{broken", "headers": {"content-type": "application/json"}}),
        ("POST", "/group", {"json": {"name": "orphan"}, "params": {"parentId": "no-such-group"}}),
        ("PUT", "/group", {"json": {"name": "no id"}}),
        ("GET", "/group", {}),
        ("GET", "/group", {"params": {"groupId": "no-such-group"}}),
        ("GET", "/user/groups", {"params": {"limit": 0}}),
        ("GET", "/user/groups", {"params": {"nextToken": "garbage"}}),
        ("PUT", "/group/invite", {"json": {"email": "x@y", "groupId": "g"}}),
        ("DELETE", "/group/apiKey", {"params": {"groupId": "g"}}),
        ("POST", "/group", {"content": b"x" * 70_000, "headers": {"content-type": "application/json"}}),
    ],
)
async def test_bad_input_is_400_message(cloud: Cloud, method: str, path: str, kwargs: dict[str, Any]) -> None:
    headers = {**IOTIZE_ALICE, **kwargs.pop("headers", {})}
    assert_error(await cloud.http.request(method, path, headers=headers, **kwargs))
    assert (await cloud.http.get("/user/groups", headers=IOTIZE_ALICE)).json() == {"items": []}


async def test_only_members_of_a_group_read_it_its_devices_and_its_users(cloud: Cloud) -> None:
    gid = (await create(cloud.http, "private"))["id"]
    reads = [
        ("/group", {"groupId": gid}),
        ("/group/devices", {"groupId": gid}),
        ("/group/users", {"groupId": gid}),
    ]
    for path, params in reads:
        assert (await cloud.http.get(path, params=params, headers=IOTIZE_ALICE)).status_code == 200
        assert_error(await cloud.http.get(path, params=params, headers=IOTIZE_BOB))
    invite = {"email": "bob@example.com", "groupId": gid, "roleId": "member"}
    assert (await cloud.http.put("/group/invite", json=invite, headers=IOTIZE_ALICE)).status_code == 200
    for path, params in reads:
        assert (await cloud.http.get(path, params=params, headers=IOTIZE_BOB)).status_code == 200
