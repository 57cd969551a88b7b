"""Value representations: typed resource values to and from bytes, driven by the model's forms.

Both faces need the same conversions: the Tap face speaks the wire encodings of tap-protocol.md
section D (ascii, uint16/uint32 big-endian, raw bytes); the CoAP face offers text/plain, the same wire
bytes as application/octet-stream, CBOR, and SenML for instance and object reads. Keeping them here
(sans-IO, no aiocoap) means a face only picks a content format and maps errors to its own codes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import cbor2

from tap_emulator.model import Encoding, Form, ResourceDef, ValueType

__all__ = [
    "CBOR",
    "LINK_FORMAT",
    "OCTET_STREAM",
    "SENML_CBOR",
    "SENML_JSON",
    "TEXT",
    "RepresentationError",
    "UnsupportedFormat",
    "decode_representation",
    "decode_wire",
    "encode_representation",
    "encode_senml",
    "encode_wire",
    "entity_tag",
    "max_body_size",
]

# CoAP content-format numbers (RFC 7252 section 12.3, RFC 8428).
TEXT = 0
LINK_FORMAT = 40
OCTET_STREAM = 42
CBOR = 60
SENML_JSON = 110
SENML_CBOR = 112

VALUE_FORMATS = (TEXT, OCTET_STREAM, CBOR)
CONTAINER_FORMATS = (SENML_JSON, SENML_CBOR)


class RepresentationError(ValueError):
    """A payload cannot be read as a value of the target form (a 4.00 / 0x80)."""


class UnsupportedFormat(ValueError):
    """The content format is not offered for this target (4.15 for writes, 4.06 for reads)."""


# ------------------------------------------------------------------------------------- Tap wire

_WIRE_WIDTH = {Encoding.UINT8: 1, Encoding.UINT16: 2, Encoding.UINT32: 4}


def encode_wire(form: Form, value: Any) -> bytes:
    """The bytes a Tap sends for ``value`` (tap-protocol.md section D)."""
    encoding = form.encoding
    if encoding is Encoding.ASCII:
        return str(value).encode("ascii", "replace")
    if encoding is Encoding.UINT8:
        return (int(value) & 0xFF).to_bytes(1, "big")
    if encoding is Encoding.UINT16:
        return (int(value) & 0xFFFF).to_bytes(2, "big")
    if encoding is Encoding.UINT32:
        return (int(value) & 0xFFFFFFFF).to_bytes(4, "big")
    if encoding is Encoding.BYTES:
        return bytes(value)
    return b""


def decode_wire(form: Form, data: bytes) -> Any:
    """Read a Tap payload as a value of ``form``; limits are checked later by ``form.validate``.

    Integers take 1 up to their width in bytes, big-endian: the SDK configurator writes the 4-byte
    /1024//42 as 2 bytes and the 2-byte security options as 1 byte (tap-protocol.md B.1, E).
    """
    encoding = form.encoding
    if encoding is Encoding.ASCII:
        if any(b >= 0x80 for b in data):
            raise RepresentationError("only ASCII characters are allowed")
        return data.decode("ascii")
    if encoding in _WIRE_WIDTH:
        width = _WIRE_WIDTH[encoding]
        if not 1 <= len(data) <= width:
            raise RepresentationError(f"an integer of 1..{width} bytes is required, not {len(data)}")
        return int.from_bytes(data, "big")
    if encoding is Encoding.BYTES:
        return bytes(data)
    if data:
        raise RepresentationError("this resource takes no payload")
    return None


# ------------------------------------------------------------------------------------- CoAP


def encode_representation(form: Form, value: Any, content_format: int) -> bytes:
    """Render one resource value; UnsupportedFormat for a format not offered (4.06)."""
    if content_format == TEXT:
        if form.value_type is ValueType.OPAQUE:
            return bytes(value).hex().encode("ascii")
        return str(value).encode("utf-8")
    if content_format == OCTET_STREAM:
        return encode_wire(form, value)
    if content_format == CBOR:
        return cbor2.dumps(value)
    raise UnsupportedFormat(f"content format {content_format} is not offered for a resource value")


# What a body may carry beyond the value itself: text/plain numbers and hex are read with surrounding
# whitespace stripped (a trailing CRLF from a shell client), and a CBOR item starts with a head of up to
# 9 bytes (RFC 8949 section 3).
TEXT_WHITESPACE_ALLOWANCE = 4
CBOR_HEAD_MAX = 9


def _max_length(form: Form) -> int:
    if form.lengths is None:
        raise ValueError(f"form {form.alias!r} declares no length limit")
    return max(form.lengths) if isinstance(form.lengths, frozenset) else form.lengths[1]


def max_body_size(form: Form) -> int:
    """The largest request body that carries a valid value of ``form`` in any accepted content format.

    A face refuses a longer body (4.13) before reading it, so a body cap always follows the model's
    limits. ValueError for a string or bytes form without a length limit.
    """
    if form.value_type is ValueType.NONE:
        return 0
    if form.value_type is ValueType.INTEGER:
        width = _WIRE_WIDTH.get(form.encoding, 8)
        low, high = form.int_range or (0, (1 << (8 * width)) - 1)
        digits = max(len(str(low)), len(str(high)))
        return max(digits + TEXT_WHITESPACE_ALLOWANCE, width, CBOR_HEAD_MAX)
    length = _max_length(form)
    if form.value_type is ValueType.OPAQUE:
        return max(2 * length + TEXT_WHITESPACE_ALLOWANCE, length + CBOR_HEAD_MAX)
    return length + CBOR_HEAD_MAX


def entity_tag(value: Any) -> bytes:
    """An ETag for a resource value, the same for each of its representations (8 bytes).

    Derived from the value alone, so a client may send it back in If-Match whatever content format it
    read; only readable values are tagged, never a secret.
    """
    return hashlib.blake2b(cbor2.dumps(value), digest_size=8).digest()


def _form_for_payload(resource: ResourceDef, content_format: int, payload: bytes) -> Form:
    """On a canonical path with several forms (password), the payload's format picks the form."""
    if len(resource.forms) == 1:
        return resource.form
    wanted: ValueType | None
    if content_format == OCTET_STREAM:
        wanted = ValueType.OPAQUE
    elif content_format == TEXT:
        wanted = ValueType.STRING
    else:
        try:
            item = cbor2.loads(payload)
        except Exception:
            raise RepresentationError("the payload is not valid CBOR") from None
        wanted = ValueType.OPAQUE if isinstance(item, bytes) else ValueType.STRING
    form = resource.form_for_type(wanted)
    if form is None:
        raise UnsupportedFormat(f"{resource.name} does not take content format {content_format}")
    return form


def decode_representation(
    resource: ResourceDef, payload: bytes, content_format: int | None, form: Form | None = None
) -> tuple[Form, Any]:
    """Read a request payload; ``form`` is fixed when an alias path named one (password-key).

    No content format means text/plain, except for a fixed bytes form, where it means raw bytes.
    """
    if content_format is None:
        content_format = OCTET_STREAM if form is not None and form.value_type is ValueType.OPAQUE else TEXT
    if content_format not in VALUE_FORMATS:
        raise UnsupportedFormat(f"content format {content_format} is not accepted for a resource value")
    if form is None:
        form = _form_for_payload(resource, content_format, payload)
    if form.value_type is ValueType.NONE:
        if payload:
            raise RepresentationError(f"{resource.name} takes no payload")
        return form, None
    if content_format == OCTET_STREAM:
        return form, decode_wire(form, payload)
    if content_format == CBOR:
        try:
            item = cbor2.loads(payload)
        except Exception:
            raise RepresentationError("the payload is not valid CBOR") from None
        expected = {ValueType.STRING: str, ValueType.INTEGER: int, ValueType.OPAQUE: bytes}[form.value_type]
        if not isinstance(item, expected) or isinstance(item, bool):
            raise RepresentationError(f"a CBOR {expected.__name__} is required")
        return form, item
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise RepresentationError("the payload is not valid UTF-8") from None
    if form.value_type is ValueType.STRING:
        return form, text
    if form.value_type is ValueType.INTEGER:
        stripped = text.strip()
        if not stripped.isdigit() or not stripped.isascii():
            raise RepresentationError("a decimal integer is required")
        return form, int(stripped)
    try:
        return form, bytes.fromhex(text.strip())
    except ValueError:
        raise RepresentationError("hexadecimal bytes are required") from None


# ------------------------------------------------------------------------------------- SenML

_SENML_CBOR_LABELS = {"bn": -2, "n": 0, "v": 2, "vs": 3, "vb": 4, "vd": 8}


def _senml_record(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"n": name, "vb": value}
    if isinstance(value, int):
        return {"n": name, "v": value}
    if isinstance(value, bytes):
        return {"n": name, "vd": value}
    return {"n": name, "vs": "" if value is None else str(value)}


def encode_senml(base_name: str, entries: Iterable[tuple[str, Any]], content_format: int) -> bytes:
    """A SenML pack (RFC 8428) of ``(relative name, value)``; UnsupportedFormat for other formats."""
    records = [_senml_record(name, value) for name, value in entries]
    if records:
        records[0] = {"bn": base_name, **records[0]}
    else:
        records = [{"bn": base_name}]
    if content_format == SENML_JSON:
        out = []
        for record in records:
            if "vd" in record:
                record = {**record, "vd": base64.urlsafe_b64encode(record["vd"]).rstrip(b"=").decode()}
            out.append(record)
        return json.dumps(out, separators=(",", ":")).encode("utf-8")
    if content_format == SENML_CBOR:
        return cbor2.dumps([{_SENML_CBOR_LABELS[k]: v for k, v in r.items()} for r in records])
    raise UnsupportedFormat(f"content format {content_format} is not offered for an instance or object")


def senml_entries(
    resources: Mapping[int, ResourceDef], values: Mapping[int, Any], prefix: str = ""
) -> list[tuple[str, Any]]:
    """Name/value pairs of an instance for ``encode_senml``, in resource-id order."""
    return [(f"{prefix}{rid}", values[rid]) for rid in sorted(values) if rid in resources]
