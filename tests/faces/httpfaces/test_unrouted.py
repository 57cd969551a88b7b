"""A path or method that no route serves, under a face's paths, still gets that face's error shape."""

from __future__ import annotations

import pytest

from .conftest import APP_SERVICE, IOTIZE_ALICE, OC_APP_1, ROMA_BASE, ROMA_TOKEN, Cloud


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "shape"),
    [
        ("GET", "/api/v1/nowhere", {}, 404, {"code", "message"}),
        ("POST", "/api/v1/devices", {}, 405, {"code", "message"}),
        ("PATCH", "/group", IOTIZE_ALICE, 400, {"message"}),
        ("GET", "/group/nowhere", IOTIZE_ALICE, 400, {"message"}),
        ("GET", "/iocm/app/devgroup/v1.3.0/devGroups/a/b", OC_APP_1, 400, {"error_code", "error_desc"}),
        ("PATCH", "/device-groups/account/acct-1", APP_SERVICE, 400, {"time_used", "error", "message"}),
        ("DELETE", ROMA_BASE, ROMA_TOKEN, 400, {"error_code", "error_msg", "request_id"}),
    ],
)
async def test_unrouted_requests_get_the_faces_error(
    cloud: Cloud, method: str, path: str, headers: dict[str, str], status: int, shape: set[str]
) -> None:
    response = await cloud.http.request(method, path, headers=headers)
    assert response.status_code == status, response.text
    assert set(response.json()) == shape


async def test_other_paths_get_plain_json(cloud: Cloud) -> None:
    response = await cloud.http.get("/elsewhere")
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


async def test_each_face_publishes_its_own_openapi_document(cloud: Cloud) -> None:
    from tap_emulator.faces.http import appservice, control, iotize, native, oceanconnect, roma

    whole = (await cloud.http.get("/openapi.json")).json()
    seen: set[str] = set()
    for face, module in [
        ("native", native),
        ("iotize", iotize),
        ("oceanconnect", oceanconnect),
        ("appservice", appservice),
        ("roma", roma),
        ("control", control),
    ]:
        # The document route takes no parameter: a query string changes nothing.
        document = (await cloud.http.get(f"/openapi/{face}.json", params={"face": "bogus"})).json()
        paths = set(document["paths"])
        assert paths and all(path.startswith(module.PATH_PREFIXES) for path in paths), (face, paths)
        seen |= paths
    assert seen == set(whole["paths"])
