"""The sync task against real stores (SQLite and PostgreSQL): latency, convergence, resets, secrets."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from tap_emulator.app import open_device
from tap_emulator.cli import main
from tap_emulator.config import load_profile
from tap_emulator.model import Operation
from tap_emulator.security import derive_scram_keys, hash_login_password
from tap_emulator.state import OutboxRow
from tap_emulator.state.outbox import backlog_status
from tap_emulator.store import ManagementStore, open_store
from tap_emulator.store.urls import sqlite_path
from tap_emulator.sync import SyncTask
from tap_emulator.tree import MAINTENANCE, DeviceTree, Request, Status

from .conftest import (
    FAST_SYNC,
    GROUP_OBJECT,
    coap_request,
    device_versions,
    running_emulator,
    store_matches_device,
    tree_of,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

NAME, PASSWORD, CREATE = 0, 2, 65535
SUPERVISOR = 65534
SERIAL = "EMU0000000001"
TEXT, OCTETS = 0, 42


async def pending_rows(tree: DeviceTree) -> list[OutboxRow]:
    return await tree.state.pending_outbox(100_000)


async def rename(tree: DeviceTree, group_id: int, name: str) -> None:
    response = await tree.handle(
        Request(Operation.WRITE, GROUP_OBJECT, group_id, NAME, name, caller=MAINTENANCE)
    )
    assert response.status is Status.CHANGED, response.diagnostic


async def create(tree: DeviceTree, group_id: int) -> None:
    response = await tree.handle(
        Request(Operation.EXECUTE, GROUP_OBJECT, group_id, CREATE, caller=MAINTENANCE)
    )
    assert response.status is Status.CREATED, response.diagnostic


async def test_a_change_made_through_coap_is_in_the_store_within_a_second(
    tmp_path: Path, store_url: str, store: ManagementStore, coap_client: aiocoap.Context
) -> None:
    async with running_emulator(tmp_path / "device.sqlite3", store_url) as emulator:
        tree = tree_of(emulator)
        await wait_until(lambda: store_matches_device(store, tree), 10)
        assert emulator.coap_address is not None
        uri = f"coap://127.0.0.1:{emulator.coap_address[1]}/group/{SUPERVISOR}/name"
        started = time.monotonic()
        response = await coap_request(coap_client, Code.PUT, uri, b"renamed-sup", TEXT)
        assert response.code == Code.CHANGED

        async def renamed() -> bool:
            group = await store.get_group(SERIAL, SUPERVISOR)
            return group is not None and group.name == "renamed-sup"

        await wait_until(renamed, 1.0, interval=0.005)
        elapsed = time.monotonic() - started
        print(f"\nCoAP PUT -> visible in the store: {elapsed * 1000:.1f} ms")
        assert elapsed < 1.0
        stored = await store.get_group(SERIAL, SUPERVISOR)
        assert stored is not None and stored.version == device_versions(tree)[SUPERVISOR]


async def test_a_thousand_changes_across_twenty_groups_converge_with_versions_intact(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    groups = list(range(100, 120))
    async with running_emulator(tmp_path / "device.sqlite3", store_url) as emulator:
        tree = tree_of(emulator)
        for group_id in groups:
            await create(tree, group_id)
        started = time.monotonic()
        for start in range(0, 1000, 50):
            await asyncio.gather(
                *(rename(tree, groups[i % 20], f"g{groups[i % 20]}-{i}") for i in range(start, start + 50))
            )
        took = await wait_until(lambda: store_matches_device(store, tree), 30)
        print(
            f"\n1000 changes written and converged in {time.monotonic() - started:.2f} s ({took:.2f} s after)"
        )
        assert emulator.sync is not None
        stats = emulator.sync.stats
        assert stats.pushes < 1000  # coalesced: far fewer pushes than changes
        print(f"pushes: {stats.pushes}, records applied: {stats.applied}")
        versions = device_versions(tree)
        for i, group_id in enumerate(groups):
            stored = await store.get_group(SERIAL, group_id)
            assert stored is not None
            assert stored.name == f"g{group_id}-{980 + i}"
            assert stored.version == versions[group_id]
            assert not stored.deleted and stored.alias == group_id and stored.is_profile
        assert await pending_rows(tree) == []


async def test_a_factory_reset_followed_by_new_changes_reaches_the_store(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    state = tmp_path / "device.sqlite3"
    async with running_emulator(state, store_url) as emulator:
        tree = tree_of(emulator)
        await create(tree, 200)
        await rename(tree, 200, "temporary")
        await rename(tree, SUPERVISOR, "before-reset")
        await wait_until(lambda: store_matches_device(store, tree), 10)
    before = await store.group_versions(SERIAL)
    assert main(["reset", "--state", str(state), "-q"]) == 0
    async with running_emulator(state, store_url) as emulator:
        tree = tree_of(emulator)
        await rename(tree, 65535, "after-reset")
        await wait_until(lambda: store_matches_device(store, tree), 10)
    after = await store.group_versions(SERIAL)
    assert all(after[group_id] > before[group_id] for group_id in before)
    tomb = await store.get_group(SERIAL, 200)
    assert tomb is not None and tomb.deleted
    supervisor = await store.get_group(SERIAL, SUPERVISOR)
    admin = await store.get_group(SERIAL, 65535)
    assert supervisor is not None and supervisor.name == "supervisor"  # the profile's name again
    assert admin is not None and admin.name == "after-reset"


async def test_a_lost_state_file_tombstones_what_the_store_holds_and_new_changes_win(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    async with running_emulator(tmp_path / "first.sqlite3", store_url) as emulator:
        await create(tree_of(emulator), 300)
        await wait_until(lambda: store_matches_device(store, tree_of(emulator)), 10)
    # Same serial, fresh state: the device does not know group 300 any more.
    async with running_emulator(tmp_path / "second.sqlite3", store_url) as emulator:
        tree = tree_of(emulator)
        await wait_until(lambda: store_matches_device(store, tree), 10)
        await rename(tree, SUPERVISOR, "new-life")
        await wait_until(lambda: store_matches_device(store, tree), 10)
    lost = await store.get_group(SERIAL, 300)
    assert lost is not None and lost.deleted
    supervisor = await store.get_group(SERIAL, SUPERVISOR)
    assert supervisor is not None and supervisor.name == "new-life"


async def test_reconcile_re_versions_past_the_store_when_the_clock_went_backwards(
    tmp_path: Path, store_url: str, store: ManagementStore
) -> None:
    async with running_emulator(tmp_path / "first.sqlite3", store_url) as emulator:
        await rename(tree_of(emulator), SUPERVISOR, "from-the-future")
        await wait_until(lambda: store_matches_device(store, tree_of(emulator)), 10)
    future = await store.group_versions(SERIAL)
    # A lost state file and a clock set back by years: fresh versions are far below the store's.
    past_ms = 1_000_000
    tree = open_device(load_profile("default"), str(tmp_path / "second.sqlite3"), clock_ms=lambda: past_ms)
    task = SyncTask(tree, lambda: open_store(store_url), settings=FAST_SYNC, clock=lambda: past_ms / 1000)
    task.start()
    try:
        assert all(version < future[SUPERVISOR] for version in device_versions(tree).values())
        await wait_until(lambda: store_matches_device(store, tree), 10)
        supervisor = await store.get_group(SERIAL, SUPERVISOR)
        assert supervisor is not None and supervisor.name == "supervisor"
        assert supervisor.version == future[SUPERVISOR] + 1
        await rename(tree, SUPERVISOR, "next-change")
        await wait_until(lambda: store_matches_device(store, tree), 10)
        supervisor = await store.get_group(SERIAL, SUPERVISOR)
        assert supervisor is not None and supervisor.name == "next-change"
        assert task.stats.reconciles >= 1
    finally:
        await task.stop()
        tree.state.close()


async def test_a_change_the_store_rejects_is_parked_with_its_reason_and_the_rest_flows(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "store.sqlite3"
    url = f"sqlite:///{store_path}"
    state = tmp_path / "device.sqlite3"
    async with running_emulator(state, url) as emulator:
        tree = tree_of(emulator)
        store = await open_store(url)
        try:
            await wait_until(lambda: store_matches_device(store, tree), 10)
            with closing(sqlite3.connect(store_path)) as connection:
                connection.execute(
                    "CREATE TRIGGER poison BEFORE UPDATE ON access_groups WHEN NEW.name = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'names may not be poison'); END"
                )
                connection.commit()
            await rename(tree, SUPERVISOR, "poison")
            await rename(tree, 65535, "still-flows")

            async def settled() -> bool:
                return await pending_rows(tree) == []

            await wait_until(settled, 10)
            admin = await store.get_group(SERIAL, 65535)
            assert admin is not None and admin.name == "still-flows"
            supervisor = await store.get_group(SERIAL, SUPERVISOR)
            assert supervisor is not None and supervisor.name == "supervisor"
            status = await backlog_status(tree.state)
            assert status.rejected == 1 and status.pending == 0
            assert status.last_rejection is not None and "poison" in status.last_rejection
            assert emulator.sync is not None and emulator.sync.stats.rejected == 1
            # Parked, not retried: a later change of the same group goes through.
            await rename(tree, SUPERVISOR, "healthy")
            await wait_until(lambda: store_matches_device(store, tree), 10)
        finally:
            await store.close()


def _secret_forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret).rstrip(b"="),
    ]


def _store_dump(url: str) -> bytes:
    """Every byte the store holds: the SQLite file and its WAL, or every PostgreSQL row as text."""
    if url.startswith("sqlite"):
        path = Path(sqlite_path(url))
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchall()
        ]
        assert "access_groups" in tables and "devices" in tables
        text = [
            str(row[0]) for table in tables for row in connection.execute(f"SELECT t::text FROM {table} t")
        ]
    return "\n".join(text).encode()


async def test_no_key_hash_or_password_reaches_the_store_whatever_the_password_form(
    tmp_path: Path, store_url: str, store: ManagementStore, coap_client: aiocoap.Context
) -> None:
    ascii_password = "Pa55-w0rd-xyz"
    hashed = hash_login_password("hash-form-pw")
    keys36 = derive_scram_keys(hash_login_password("k36-pw"), bytes.fromhex("0a0b0c0d"), 1000)
    keys40 = derive_scram_keys(hash_login_password("k40-pw"), bytes.fromhex("01020304"), 1200)
    blob36 = keys36.to_blob()[:36]
    writes = [
        (56, "password", ascii_password.encode(), TEXT),
        (57, "password-key", hashed, OCTETS),
        (58, "password-key", blob36, OCTETS),
        (59, "password-key", keys40.to_blob(), OCTETS),
    ]
    assert [len(value) for _, _, value, _ in writes] == [13, 16, 36, 40]
    async with running_emulator(tmp_path / "device.sqlite3", store_url) as emulator:
        tree = tree_of(emulator)
        assert emulator.coap_address is not None
        base = f"coap://127.0.0.1:{emulator.coap_address[1]}"
        for group_id, slug, value, content_format in writes:
            created = await coap_request(coap_client, Code.POST, f"{base}/group/{group_id}/create")
            assert created.code == Code.CREATED
            response = await coap_request(
                coap_client, Code.POST, f"{base}/group/{group_id}/{slug}", value, content_format
            )
            assert response.code == Code.CHANGED, response.payload
        await wait_until(lambda: store_matches_device(store, tree), 10)
        secrets = [ascii_password.encode(), hashed, keys36.stored_key, keys36.server_key]
        secrets += [keys40.stored_key, keys40.server_key, keys40.to_blob(), blob36]
        for group_id in (56, 57, 58, 59, 0, SUPERVISOR, 65535):
            account = tree.account(group_id)
            assert account is not None and account.credential is not None
            if account.credential.password_hash is not None:
                secrets.append(account.credential.password_hash)
            if account.credential.scram is not None:
                secrets += [account.credential.scram.stored_key, account.credential.scram.server_key]
    for group_id in (56, 57, 58, 59):
        stored = await store.get_group(SERIAL, group_id)
        assert stored is not None and stored.password_set
    salted = await store.get_group(SERIAL, 59)
    assert salted is not None and (salted.scram_salt, salted.scram_iteration) == (0x01020304, 1200)
    dump = _store_dump(store_url)
    assert SERIAL.encode() in dump  # the scan sees the data
    for secret in secrets:
        for form in _secret_forms(secret):
            assert form not in dump
