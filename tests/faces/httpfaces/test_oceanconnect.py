"""The OceanConnect face (seed 002) over real HTTP: app_key + Bearer, HTTP 200 business errors, throttle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tap_emulator.faces.http.cloud_config import DEFAULT_CLOUD_CONFIG

from .conftest import OC_APP_1, OC_APP_2, OC_BASE, Cloud, start_cloud_emulator
from .test_native import add_synced_device

FIELDS = {"name", "description", "id", "appId", "maxDevNum", "curDevNum"}


async def create(http: httpx.AsyncClient, name: str, headers: dict[str, str] = OC_APP_1, **body: Any) -> Any:
    response = await http.post(OC_BASE, json={"name": name, **body}, headers=headers)
    assert response.status_code == 200 and "error_code" not in response.json(), response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_desc"} and body["error_code"] == code


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"app_key": "oc-app-1"},
        {"app_key": "oc-app-1", "Authorization": "Bearer oc-token-2"},
        {"app_key": "oc-app-1", "Authorization": "oc-token-1"},
        {"app_key": "nope", "Authorization": "Bearer oc-token-1"},
    ],
)
async def test_bad_credentials_are_403_1010005(cloud: Cloud, headers: dict[str, str]) -> None:
    assert_error(await cloud.http.get(OC_BASE, headers=headers), 403, "1010005")


async def test_create_modify_and_read_with_the_seed_fields(cloud: Cloud) -> None:
    group = await create(cloud.http, "Lobby1", description="first", maxDevNum="5")  # a numeric string
    assert set(group) == FIELDS
    assert group["appId"] == "oc-app-1" and group["maxDevNum"] == 5 and group["curDevNum"] == 0
    modified = await cloud.http.put(
        f"{OC_BASE}/{group['id']}", json={"name": "Lobby2", "maxDevNum": 0}, headers=OC_APP_1
    )
    assert modified.status_code == 200
    assert modified.json() | {} == {**group, "name": "Lobby2", "maxDevNum": 0}
    read = await cloud.http.get(f"{OC_BASE}/{group['id']}", headers=OC_APP_1)
    assert read.json() == modified.json()


async def test_business_errors_come_back_with_http_200(cloud: Cloud, store_url: str) -> None:
    group = await create(cloud.http, "Taken")
    assert_error(await cloud.http.post(OC_BASE, json={"name": "Taken"}, headers=OC_APP_1), 200, "100602")
    await create(cloud.http, "Taken", headers=OC_APP_2)  # names are unique per app only
    other = await create(cloud.http, "Other")
    rename = await cloud.http.put(f"{OC_BASE}/{other['id']}", json={"name": "Taken"}, headers=OC_APP_1)
    assert_error(rename, 200, "100602")
    missing = await cloud.http.put(f"{OC_BASE}/nosuchgroup", json={"name": "X"}, headers=OC_APP_1)
    assert_error(missing, 200, "100603")
    # Another app's group is not visible without accessAppId.
    assert_error(await cloud.http.get(f"{OC_BASE}/{group['id']}", headers=OC_APP_2), 200, "100603")
    # Capacity: two real members, then a maxDevNum below the count.
    await add_synced_device(store_url, "EMU-SECOND")
    for serial in (cloud.serial, "EMU-SECOND"):
        assert (
            await cloud.http.put(f"/api/v1/device-groups/{group['id']}/devices/{serial}")
        ).status_code == 200
    counted = (await cloud.http.get(f"{OC_BASE}/{group['id']}", headers=OC_APP_1)).json()
    assert counted["curDevNum"] == 2
    shrink = await cloud.http.put(
        f"{OC_BASE}/{group['id']}", json={"name": "Taken", "maxDevNum": 1}, headers=OC_APP_1
    )
    assert_error(shrink, 200, "100601")
    assert (await cloud.http.get(f"{OC_BASE}/{group['id']}", headers=OC_APP_1)).json()["maxDevNum"] == 0


async def test_access_app_id_delegation(cloud: Cloud) -> None:
    group = await create(cloud.http, "Shared")
    path = f"{OC_BASE}/{group['id']}"
    delegated = await cloud.http.put(
        path, params={"accessAppId": "oc-app-1"}, json={"name": "ByApp2"}, headers=OC_APP_2
    )
    assert delegated.status_code == 200 and delegated.json()["name"] == "ByApp2"
    assert delegated.json()["appId"] == "oc-app-1"
    refused = await cloud.http.put(
        path, params={"accessAppId": "oc-app-2"}, json={"name": "No"}, headers=OC_APP_1
    )
    assert_error(refused, 200, "100217")
    unknown = await cloud.http.put(
        path, params={"accessAppId": "ghost"}, json={"name": "No"}, headers=OC_APP_2
    )
    assert_error(unknown, 200, "100203")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"description": "no name"},
        {"name": ""},
        {"name": "with-dash"},
        {"name": "a" * 51},
        {"name": "ok", "description": "d" * 1025},
        {"name": "ok", "maxDevNum": -1},
        {"name": "ok", "maxDevNum": "-1"},
        {"name": "ok", "maxDevNum": "many"},
        {"name": "ok", "maxDevNum": 1.5},
        {"name": 7},
    ],
)
async def test_invalid_input_is_400_50400_and_writes_nothing(cloud: Cloud, body: dict[str, Any]) -> None:
    assert_error(await cloud.http.post(OC_BASE, json=body, headers=OC_APP_1), 400, "50400")
    listing = (await cloud.http.get(OC_BASE, params={"pageSize": 10}, headers=OC_APP_1)).json()
    assert listing["totalCount"] == 0 and listing["list"] == []


async def test_modify_needs_a_name(cloud: Cloud) -> None:
    group = await create(cloud.http, "Named")
    response = await cloud.http.put(f"{OC_BASE}/{group['id']}", json={"maxDevNum": 3}, headers=OC_APP_1)
    assert_error(response, 400, "50400")


async def test_list_pages_with_page_no_and_a_default_page_size_of_one(cloud: Cloud) -> None:
    ids = [(await create(cloud.http, f"G{index}"))["id"] for index in range(5)]
    default = (await cloud.http.get(OC_BASE, headers=OC_APP_1)).json()
    assert (
        default["pageSize"] == 1
        and default["totalCount"] == 5
        and [g["id"] for g in default["list"]] == ids[:1]
    )
    pages = [
        [
            g["id"]
            for g in (
                await cloud.http.get(OC_BASE, params={"pageNo": n, "pageSize": 2}, headers=OC_APP_1)
            ).json()["list"]
        ]
        for n in range(4)
    ]
    assert pages == [ids[0:2], ids[2:4], ids[4:5], []]
    named = (await cloud.http.get(OC_BASE, params={"name": "G3", "pageSize": 10}, headers=OC_APP_1)).json()
    assert named["totalCount"] == 1 and named["list"][0]["id"] == ids[3]
    assert_error(await cloud.http.get(OC_BASE, params={"pageSize": 501}, headers=OC_APP_1), 400, "50400")


async def test_the_default_throttle_is_100_calls_a_minute_per_app(cloud: Cloud) -> None:
    for _ in range(100):
        assert (await cloud.http.get(OC_BASE, headers=OC_APP_1)).status_code == 200
    assert_error(await cloud.http.get(OC_BASE, headers=OC_APP_1), 403, "1010009")
    assert (await cloud.http.get(OC_BASE, headers=OC_APP_2)).status_code == 200  # per app


async def test_the_throttle_is_configurable_and_zero_turns_it_off(tmp_path: Path, store_url: str) -> None:
    text = DEFAULT_CLOUD_CONFIG.read_text().replace("throttle_per_minute = 100", "throttle_per_minute = 0")
    config = tmp_path / "cloud.toml"
    config.write_text(text)
    emulator = await start_cloud_emulator(tmp_path, store_url, cloud_config=str(config))
    try:
        assert emulator.http_address is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.http_address[1]}") as http:
            for _ in range(130):
                assert (await http.get(OC_BASE, headers=OC_APP_1)).status_code == 200
    finally:
        await emulator.stop()
