"""The ROMA Connect face (seed 004) over real HTTP: X-Auth-Token, integer ids, parents, the prescribed 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import ROMA_BASE, ROMA_TOKEN, Cloud

RESPONSE_FIELDS = {
    "permissions", "parent_id", "id", "name", "description", "app_id", "created_user", "last_updated_user",
    "created_datetime", "last_updated_datetime",
}  # fmt: skip


async def create(http: httpx.AsyncClient, name: str, parent_id: float = 0, app_id: str = "app-a") -> Any:
    response = await http.post(
        ROMA_BASE, json={"parent_id": parent_id, "name": name, "app_id": app_id}, headers=ROMA_TOKEN
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_msg", "request_id"} and body["error_code"] == code
    assert len(body["error_msg"]) <= 200 and len(body["request_id"]) <= 64


async def test_create_with_the_seed_response(cloud: Cloud) -> None:
    root = await create(cloud.http, "device_group")
    assert set(root) == RESPONSE_FIELDS
    assert isinstance(root["id"], int) and root["id"] >= 1 and root["parent_id"] == 0
    assert root["permissions"] == ["read", "access", "delete", "modify"]
    assert root["created_user"] == {"user_id": "roma-user-1", "user_name": "roma-user"}
    child = await create(cloud.http, "child-1", parent_id=root["id"] + 0.9)  # rounded down
    assert child["parent_id"] == root["id"] and child["id"] > root["id"]
    detail = await cloud.http.get(f"{ROMA_BASE}/{child['id']}", headers=ROMA_TOKEN)
    assert detail.json() == child
    # The native API accepts the ROMA id as is, in decimal.
    native = (await cloud.http.get(f"/api/v1/device-groups/{child['id']}")).json()
    assert native["name"] == "child-1" and native["parent_id"] == str(root["id"])


async def test_list_is_a_tree_per_app(cloud: Cloud) -> None:
    root = await create(cloud.http, "root")
    child = await create(cloud.http, "child", parent_id=root["id"])
    other = await create(cloud.http, "other", app_id="app-b")
    tree = (await cloud.http.get(ROMA_BASE, params={"app_id": "app-a"}, headers=ROMA_TOKEN)).json()
    assert tree["total"] == 2 and tree["size"] == 2
    assert [node["id"] for node in tree["items"]] == [root["id"]]
    assert [node["id"] for node in tree["items"][0]["children"]] == [child["id"]]
    everything = (await cloud.http.get(ROMA_BASE, headers=ROMA_TOKEN)).json()
    assert {node["id"] for node in everything["items"]} == {root["id"], other["id"]}


@pytest.mark.parametrize("headers", [{}, {"X-Auth-Token": "wrong"}])
async def test_a_bad_token_is_refused(cloud: Cloud, headers: dict[str, str]) -> None:
    assert_error(await cloud.http.get(ROMA_BASE, headers=headers), 401, "APIGW.0301")


@pytest.mark.parametrize(
    "path",
    ["/v2/proj-1/link/instances/inst-2/device-groups", "/v2/proj-9/link/instances/inst-1/device-groups"],
)
async def test_a_missing_instance_is_500_roma_00110002(cloud: Cloud, path: str) -> None:
    body = {"parent_id": 0, "name": "device_group", "app_id": "a"}
    assert_error(await cloud.http.post(path, json=body, headers=ROMA_TOKEN), 500, "ROMA.00110002")
    assert_error(await cloud.http.get(path, headers=ROMA_TOKEN), 500, "ROMA.00110002")


async def test_missing_groups_are_404_roma_00110006(cloud: Cloud) -> None:
    assert_error(await cloud.http.get(f"{ROMA_BASE}/424242", headers=ROMA_TOKEN), 404, "ROMA.00110006")
    orphan = await cloud.http.post(
        ROMA_BASE, json={"parent_id": 999, "name": "orphan", "app_id": "a"}, headers=ROMA_TOKEN
    )
    assert_error(orphan, 404, "ROMA.00110006")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "no_parent", "app_id": "a"},
        {"parent_id": 0, "app_id": "a"},
        {"parent_id": 0, "name": "no_app"},
        {"parent_id": 0, "name": "x", "app_id": "a"},
        {"parent_id": 0, "name": "has space", "app_id": "a"},
        {"parent_id": 0, "name": "n" * 65, "app_id": "a"},
        {"parent_id": 0, "name": "ok", "description": "d" * 201, "app_id": "a"},
        {"parent_id": 0, "name": "ok", "app_id": "a" * 37},
        {"parent_id": -1, "name": "ok", "app_id": "a"},
        {"parent_id": "0", "name": "ok", "app_id": "a"},
        {"parent_id": 10**17, "name": "ok", "app_id": "a"},
    ],
)
async def test_invalid_input_is_400_scb_and_writes_nothing(cloud: Cloud, body: dict[str, Any]) -> None:
    assert_error(await cloud.http.post(ROMA_BASE, json=body, headers=ROMA_TOKEN), 400, "SCB.00000000")
    assert (await cloud.http.get(ROMA_BASE, headers=ROMA_TOKEN)).json()["items"] == []
