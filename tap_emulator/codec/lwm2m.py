"""The LwM2M content formats of reads and writes above a single plain value, sans-IO.

An LwM2M server reads and writes an object, an instance or a resource in TLV (11542), LwM2M JSON
(11543), SenML JSON (110) or SenML CBOR (112) with LwM2M naming, or LwM2M CBOR (11544). Every one of
them carries the same thing: values addressed by (instance, resource) under one object. This module
turns such ``Record``s into each format and back, typing values by the model's resource forms
(String: text, Integer: a number, Opaque: bytes), so a face only picks the format and maps errors.
OMA-TLV framing is ``tap_emulator.codec.tlv``; JSON and CBOR come from the standard library and cbor2.

Names (LwM2M TS 1.1 Transport section 7.4.5): the base name is the requested path with a trailing
``/`` (``/1025/`` or ``/1025/7/``), each record's name the rest (``7/0`` or ``0``); a resource read is
one record whose base name is the resource path and whose name is empty.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from tap_emulator.codec import tlv
from tap_emulator.model import ObjectDef, ResourceDef, ValueType

__all__ = [
    "LWM2M_CBOR",
    "LWM2M_FORMATS",
    "LWM2M_JSON",
    "SENML_CBOR",
    "SENML_JSON",
    "TLV",
    "Lwm2mFormatError",
    "Record",
    "decode_records",
    "encode_records",
]

SENML_JSON = 110
SENML_CBOR = 112
TLV = 11542
LWM2M_JSON = 11543
LWM2M_CBOR = 11544
LWM2M_FORMATS = (SENML_JSON, SENML_CBOR, TLV, LWM2M_JSON, LWM2M_CBOR)

# Records a write may carry: far more than an object of the model has resources, far fewer than a
# hostile payload could list (the body itself is already capped by the face).
MAX_RECORDS = 1024
_SENML_CBOR_LABELS = {"bn": -2, "n": 0, "v": 2, "vs": 3, "vb": 4, "vd": 8}
_SENML_CBOR_NAMES = {label: name for name, label in _SENML_CBOR_LABELS.items()}


class Lwm2mFormatError(ValueError):
    """A payload is not a valid representation of the addressed object, instance or resource (4.00)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One value: ``instance_id`` is None only in a write to an object without its instance id (a
    Create that lets the device choose)."""

    instance_id: int | None
    resource_id: int
    value: Any


# ------------------------------------------------------------------------------------- encoding


def _base(obj: ObjectDef, instance_id: int | None, resource_id: int | None) -> str:
    parts = [str(obj.id)]
    if instance_id is not None:
        parts.append(str(instance_id))
    if resource_id is not None:
        parts.append(str(resource_id))
        return "/" + "/".join(parts)
    return "/" + "/".join(parts) + "/"


def _relative(record: Record, instance_id: int | None, resource_id: int | None) -> str:
    if resource_id is not None:
        return ""
    if instance_id is not None or record.instance_id is None:
        return str(record.resource_id)
    return f"{record.instance_id}/{record.resource_id}"


def _senml(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        return "vb", value
    if isinstance(value, int | float):
        return "v", value
    if isinstance(value, bytes):
        return "vd", value
    return "vs", "" if value is None else str(value)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _tlv_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return tlv.encode_bool(value)
    if isinstance(value, int):
        return tlv.encode_int(value)
    if isinstance(value, float):
        return tlv.encode_float(value)
    if isinstance(value, bytes):
        return value
    return ("" if value is None else str(value)).encode("utf-8")


def encode_records(
    obj: ObjectDef,
    instance_id: int | None,
    resource_id: int | None,
    records: Iterable[Record],
    content_format: int,
    *,
    base: str | None = None,
) -> bytes:
    """The payload of a read of ``/obj[/instance[/resource]]`` holding ``records`` in ``content_format``
    (one of ``LWM2M_FORMATS``). ``base`` overrides the SenML base name (an alias path)."""
    records = list(records)
    base_name = _base(obj, instance_id, resource_id) if base is None else base
    if content_format in (SENML_JSON, SENML_CBOR):
        senml: list[dict[str, Any]] = []
        for record in records:
            key, value = _senml(record.value)
            name = _relative(record, instance_id, resource_id)
            entry: dict[str, Any] = {"n": name} if name else {}
            entry[key] = value
            senml.append(entry)
        if senml:
            senml[0] = {"bn": base_name, **senml[0]}
        else:
            senml = [{"bn": base_name}]
        if content_format == SENML_CBOR:
            return bytes(cbor2.dumps([{_SENML_CBOR_LABELS[k]: v for k, v in r.items()} for r in senml]))
        for entry in senml:
            if "vd" in entry:
                entry["vd"] = _b64url(entry["vd"])
        return json.dumps(senml, separators=(",", ":")).encode("utf-8")
    if content_format == LWM2M_JSON:
        entries = []
        for record in records:
            key, value = _senml(record.value)
            if key == "vd":
                key, value = "sv", base64.b64encode(value).decode("ascii")
            entries.append(
                {
                    "n": _relative(record, instance_id, resource_id),
                    {"vs": "sv", "vb": "bv"}.get(key, key): value,
                }
            )
        return json.dumps({"bn": base_name, "e": entries}, separators=(",", ":")).encode("utf-8")
    if content_format == TLV:
        return tlv.encode(_tlv_nodes(records, instance_id, resource_id))
    if content_format == LWM2M_CBOR:
        tree: dict[int, Any] = {}
        for record in records:
            iid = instance_id if record.instance_id is None else record.instance_id
            tree.setdefault(0 if iid is None else iid, {})[record.resource_id] = record.value
        return bytes(cbor2.dumps({obj.id: tree}))
    raise ValueError(f"content format {content_format} is not an LwM2M format")


def _tlv_nodes(records: list[Record], instance_id: int | None, resource_id: int | None) -> list[tlv.TlvNode]:
    def value_node(record: Record) -> tlv.TlvNode:
        return tlv.TlvNode(tlv.TlvType.RESOURCE_VALUE, record.resource_id, _tlv_value(record.value))

    if resource_id is not None or instance_id is not None:
        return [value_node(r) for r in records]
    by_instance: dict[int, list[tlv.TlvNode]] = {}
    for record in records:
        by_instance.setdefault(record.instance_id or 0, []).append(value_node(record))
    return [
        tlv.TlvNode(tlv.TlvType.OBJECT_INSTANCE, iid, tuple(nodes))
        for iid, nodes in sorted(by_instance.items())
    ]


# ------------------------------------------------------------------------------------- decoding


def _typed(resource: ResourceDef, value: Any, *, text_is_base64: bool = False) -> Any:
    """A decoded value as the model types the resource; Lwm2mFormatError when it does not fit."""
    kind = resource.form.value_type
    if kind is ValueType.INTEGER:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Lwm2mFormatError(f"{resource.name}: an integer is required")
        return value
    if kind is ValueType.STRING:
        if not isinstance(value, str):
            raise Lwm2mFormatError(f"{resource.name}: a string is required")
        return value
    if kind is ValueType.OPAQUE:
        if isinstance(value, str) and text_is_base64:
            try:
                padded = value + "=" * (-len(value) % 4)
                return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise Lwm2mFormatError(f"{resource.name}: base64 bytes are required") from None
        if not isinstance(value, bytes):
            raise Lwm2mFormatError(f"{resource.name}: bytes are required")
        return value
    raise Lwm2mFormatError(f"{resource.name} takes no value")


def _tlv_typed(resource: ResourceDef, data: bytes) -> Any:
    kind = resource.form.value_type
    try:
        if kind is ValueType.INTEGER:
            return tlv.decode_int(data)
        if kind is ValueType.STRING:
            return data.decode("utf-8")
    except (tlv.TlvError, UnicodeDecodeError) as exc:
        raise Lwm2mFormatError(f"{resource.name}: {exc}") from None
    if kind is ValueType.OPAQUE:
        return bytes(data)
    raise Lwm2mFormatError(f"{resource.name} takes no value")


def _resource(obj: ObjectDef, resource_id: int) -> ResourceDef:
    resource = obj.resources.get(resource_id)
    if resource is None:
        raise Lwm2mFormatError(f"object {obj.id} has no resource {resource_id}")
    return resource


def _check_path(
    obj: ObjectDef, instance_id: int | None, resource_id: int | None, path: list[int]
) -> tuple[int | None, int]:
    """(instance, resource) of a full path that must lie under the addressed one."""
    if not path or path[0] != obj.id:
        raise Lwm2mFormatError(f"a record names a path outside object {obj.id}")
    rest = path[1:]
    if obj.multiple:
        if len(rest) == 1 and instance_id is None and resource_id is None:
            # /obj/{r}: a Create's resource without its instance id
            return None, rest[0]
        if len(rest) != 2:
            raise Lwm2mFormatError("a record must name an instance and a resource")
        iid, rid = rest
    else:
        if len(rest) == 2 and rest[0] == 0:
            rest = rest[1:]
        if len(rest) != 1:
            raise Lwm2mFormatError("a record must name a resource")
        iid, rid = None, rest[0]
    if instance_id is not None and iid != instance_id:
        raise Lwm2mFormatError(f"a record names instance {iid}, not {instance_id}")
    if resource_id is not None and rid != resource_id:
        raise Lwm2mFormatError(f"a record names resource {rid}, not {resource_id}")
    return iid, rid


def _parse_path(name: str) -> list[int]:
    parts = name.strip("/").split("/")
    if not name.startswith("/") or not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in parts):
        raise Lwm2mFormatError(f"record name {name!r} is not an LwM2M path")
    return [int(p) for p in parts]


def decode_records(
    obj: ObjectDef, instance_id: int | None, resource_id: int | None, payload: bytes, content_format: int
) -> list[Record]:
    """The values a write to ``/obj[/instance[/resource]]`` carries, typed by the model;
    Lwm2mFormatError for anything malformed, outside the addressed path, or of the wrong type."""
    if content_format == TLV:
        records = _decode_tlv(obj, instance_id, resource_id, payload)
    elif content_format == LWM2M_CBOR:
        records = _decode_lwm2m_cbor(obj, instance_id, resource_id, payload)
    elif content_format in (SENML_JSON, SENML_CBOR, LWM2M_JSON):
        records = _decode_senml(obj, instance_id, resource_id, payload, content_format)
    else:
        raise ValueError(f"content format {content_format} is not an LwM2M format")
    if len(records) > MAX_RECORDS:
        raise Lwm2mFormatError(f"more than {MAX_RECORDS} records")
    return records


def _decode_tlv(
    obj: ObjectDef, instance_id: int | None, resource_id: int | None, payload: bytes
) -> list[Record]:
    try:
        nodes = tlv.decode(payload)
    except tlv.TlvError as exc:
        raise Lwm2mFormatError(f"invalid TLV: {exc}") from None
    records: list[Record] = []

    def values(iid: int | None, children: Iterable[tlv.TlvNode]) -> None:
        for node in children:
            if node.type is not tlv.TlvType.RESOURCE_VALUE or not isinstance(node.value, bytes):
                raise Lwm2mFormatError("only single-instance resources are defined here")
            if resource_id is not None and node.id != resource_id:
                raise Lwm2mFormatError(f"the TLV names resource {node.id}, not {resource_id}")
            records.append(Record(iid, node.id, _tlv_typed(_resource(obj, node.id), node.value)))

    for node in nodes:
        if node.type is tlv.TlvType.OBJECT_INSTANCE:
            if resource_id is not None or not obj.multiple:
                raise Lwm2mFormatError("an object instance TLV is not expected here")
            if instance_id is not None and node.id != instance_id:
                raise Lwm2mFormatError(f"the TLV names instance {node.id}, not {instance_id}")
            assert isinstance(node.value, tuple)
            values(node.id, node.value)
        else:
            values(instance_id, [node])
    return records


def _decode_lwm2m_cbor(
    obj: ObjectDef, instance_id: int | None, resource_id: int | None, payload: bytes
) -> list[Record]:
    try:
        root = cbor2.loads(payload)
    except Exception:
        raise Lwm2mFormatError("the payload is not valid CBOR") from None
    records: list[Record] = []

    def walk(node: Any, path: list[int], depth: int) -> None:
        if not isinstance(node, dict):
            iid, rid = _check_path(obj, instance_id, resource_id, path)
            records.append(Record(iid, rid, _typed(_resource(obj, rid), node)))
            return
        if depth > 4 or len(records) > MAX_RECORDS:
            raise Lwm2mFormatError("LwM2M CBOR nested too deep or too large")
        for key, child in node.items():
            keys = key if isinstance(key, list) else [key]
            if not keys or not all(
                isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 0xFFFF for k in keys
            ):
                raise Lwm2mFormatError("LwM2M CBOR keys are ids of 0..65535 or arrays of them")
            walk(child, [*path, *keys], depth + 1)

    walk(root, [], 0)
    return records


def _senml_items(payload: bytes, content_format: int) -> list[dict[str, Any]]:
    try:
        raw = cbor2.loads(payload) if content_format == SENML_CBOR else json.loads(payload.decode("utf-8"))
    except Exception:
        raise Lwm2mFormatError("the payload is not valid JSON or CBOR") from None
    if content_format == LWM2M_JSON:
        if not isinstance(raw, dict) or not isinstance(raw.get("e"), list):
            raise Lwm2mFormatError('LwM2M JSON is an object with an "e" array')
        items = [{"bn": raw.get("bn", "")}] if raw.get("bn") is not None else []
        rename: dict[str, str] = {"sv": "vs", "bv": "vb"}
        for entry in raw["e"]:
            if not isinstance(entry, dict):
                raise Lwm2mFormatError("every LwM2M JSON entry is an object")
            items.append({rename.get(str(k), str(k)): v for k, v in entry.items()})
        return items
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise Lwm2mFormatError("a SenML pack is an array of records")
    if content_format == SENML_CBOR:
        return [{_SENML_CBOR_NAMES.get(k, str(k)): v for k, v in r.items()} for r in raw]
    return raw


def _decode_senml(
    obj: ObjectDef, instance_id: int | None, resource_id: int | None, payload: bytes, content_format: int
) -> list[Record]:
    items = _senml_items(payload, content_format)
    if len(items) > MAX_RECORDS:
        raise Lwm2mFormatError(f"more than {MAX_RECORDS} records")
    records: list[Record] = []
    base = ""
    for item in items:
        if "bn" in item:
            if not isinstance(item["bn"], str):
                raise Lwm2mFormatError("a base name is a string")
            base = item["bn"]
        values = [k for k in ("v", "vs", "vb", "vd") if k in item]
        if not values:
            if "bn" in item and len(item) == 1:
                continue
            raise Lwm2mFormatError("a record without a value")
        name = item.get("n", "")
        if not isinstance(name, str) or len(values) > 1:
            raise Lwm2mFormatError("a record has one name and one value")
        iid, rid = _check_path(obj, instance_id, resource_id, _parse_path(base + name))
        value = item[values[0]]
        text_is_base64 = values[0] == "vd" or content_format == LWM2M_JSON
        records.append(Record(iid, rid, _typed(_resource(obj, rid), value, text_is_base64=text_is_base64)))
    return records


def records_of(values: Mapping[int, Any], instance_id: int | None = None) -> list[Record]:
    """Records of one instance's (or a single-instance object's) values, in resource-id order."""
    return [Record(instance_id, rid, v) for rid, v in sorted(values.items()) if v is not None]
