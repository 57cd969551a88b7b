"""The declarative device model: objects and resources loaded from ``resources/objects/*.xml``.

The model is the single source of truth of the emulator. Routes, alias paths, allowed methods, value
types, wire encodings, limits and discovery links are all derived from it, so no face hard-codes a
resource id. Files are OMA DDF (what Leshan and Anjay load) with a few ``emu:`` annotations, documented
in ``resources/objects/1025-group.xml``.
"""

from __future__ import annotations

import enum
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Behaviour",
    "DeviceModel",
    "Encoding",
    "Form",
    "ModelError",
    "ObjectDef",
    "Operation",
    "ResourceDef",
    "ValueError_",
    "ValueType",
    "default_model",
    "load_model",
]

EMU_NS = "urn:tap-emulator:model:1"


def find_resources_dir() -> Path:
    """Where ``resources/`` is: the checkout (run from source or an editable install), else the copy a
    wheel installs under ``{prefix}/share/tap-emulator/resources``."""
    candidates = [
        Path(__file__).resolve().parents[2] / "resources",
        Path(sys.prefix) / "share" / "tap-emulator" / "resources",
    ]
    for candidate in candidates:
        if (candidate / "objects").is_dir():
            return candidate
    return candidates[0]


RESOURCES_DIR = find_resources_dir()
DEFAULT_OBJECTS_DIR = RESOURCES_DIR / "objects"


class ModelError(Exception):
    """A model file is malformed; the message names the file and the offending element."""


class ValueError_(ValueError):
    """A value breaks the limits its form declares; the message is a short, secret-free diagnostic."""


class Operation(enum.Enum):
    """Neutral operations; faces map their methods onto these (GET, PUT, POST, DELETE)."""

    READ = "R"
    WRITE = "W"
    EXECUTE = "E"
    DELETE = "D"


class ValueType(enum.Enum):
    STRING = "String"
    INTEGER = "Integer"
    OPAQUE = "Opaque"
    NONE = ""


class Encoding(enum.Enum):
    """How a value travels in a Tap frame (tap-protocol.md section D)."""

    ASCII = "ascii"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    BYTES = "bytes"
    NONE = "none"


class Behaviour(enum.Enum):
    VALUE = "value"  # a stored value
    CREDENTIAL = "credential"  # write-only secret, stored through the SCRAM engine
    CREATE = "create"  # executing it creates the instance
    REFERENCE = "reference"  # an instance id of the same object that must exist
    SESSION = "session"  # served by a connection's session, not stored
    ACTION = "action"  # executing it makes the object's handler act (reboot ...); nothing stored
    COMPUTED = "computed"  # served by the object's handler from other state (target memory, a list)


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*\Z")


@dataclass(frozen=True, slots=True)
class Form:
    """One way of writing or reading a resource: its alias slug, value type, encoding and limits."""

    alias: str
    value_type: ValueType
    encoding: Encoding
    int_range: tuple[int, int] | None = None
    lengths: tuple[int, int] | frozenset[int] | None = None  # (min, max) or a set of sizes
    printable_ascii: bool = False

    def validate(self, value: object) -> None:
        """Raise ValueError_ unless ``value`` is of this form's type and within its limits."""
        if self.value_type is ValueType.NONE:
            if value not in (None, b"", ""):
                raise ValueError_("this resource takes no value")
            return
        if self.value_type is ValueType.INTEGER:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError_("an integer is required")
            if self.int_range is not None:
                low, high = self.int_range
                if not low <= value <= high:
                    raise ValueError_(f"value must be in {low}..{high}")
            return
        if self.value_type is ValueType.STRING:
            if not isinstance(value, str):
                raise ValueError_("a string is required")
            if self.printable_ascii and not _PRINTABLE_ASCII.match(value):
                raise ValueError_("only printable ASCII characters are allowed")
            size = len(value.encode("utf-8"))
        else:
            if not isinstance(value, bytes):
                raise ValueError_("bytes are required")
            size = len(value)
        self._check_length(size)

    def _check_length(self, size: int) -> None:
        if self.lengths is None:
            return
        if isinstance(self.lengths, frozenset):
            if size not in self.lengths:
                allowed = ", ".join(str(n) for n in sorted(self.lengths))
                raise ValueError_(f"length must be one of {allowed} bytes, not {size}")
            return
        low, high = self.lengths
        if not low <= size <= high:
            unit = "characters" if self.value_type is ValueType.STRING else "bytes"
            raise ValueError_(f"length must be {low}..{high} {unit}, not {size}")


@dataclass(frozen=True, slots=True)
class ResourceDef:
    id: int
    name: str
    operations: frozenset[Operation]
    forms: tuple[Form, ...]
    behaviour: Behaviour
    default: str | None = None
    units: str = ""
    description: str = ""
    # Readable on the object itself (no instance): the handler answers for every instance at once.
    object_read: bool = False

    @property
    def form(self) -> Form:
        """The primary form (the one the canonical path reads and the alias slug names first)."""
        return self.forms[0]

    @property
    def readable(self) -> bool:
        return Operation.READ in self.operations

    @property
    def secret(self) -> bool:
        return self.behaviour is Behaviour.CREDENTIAL

    def form_for_type(self, value_type: ValueType) -> Form | None:
        for candidate in self.forms:
            if candidate.value_type is value_type:
                return candidate
        return None

    def default_value(self, instance_id: int | None) -> object:
        """The value a freshly created instance holds, typed by the primary form."""
        if self.default is None:
            return None
        if self.default == "@instance":
            return instance_id
        if self.form.value_type is ValueType.INTEGER:
            return int(self.default)
        return self.default


@dataclass(frozen=True, slots=True)
class ObjectDef:
    id: int
    name: str
    alias: str | None
    multiple: bool
    instance_range: tuple[int, int] | None
    resources: Mapping[int, ResourceDef]
    description: str = ""
    forms_by_alias: Mapping[str, tuple[ResourceDef, Form]] = field(default_factory=dict)
    # Whether changes of its instances go to the outbox (the management store hears of them).
    synced: bool = True

    def valid_instance(self, instance_id: int | None) -> bool:
        if not self.multiple:
            return instance_id is None
        if instance_id is None or self.instance_range is None:
            return False
        low, high = self.instance_range
        return low <= instance_id <= high

    def stored_resources(self) -> list[ResourceDef]:
        return [r for r in self.resources.values() if r.behaviour in (Behaviour.VALUE, Behaviour.REFERENCE)]


@dataclass(frozen=True, slots=True)
class DeviceModel:
    objects: Mapping[int, ObjectDef]

    def object_by_alias(self, alias: str) -> ObjectDef | None:
        for obj in self.objects.values():
            if obj.alias == alias:
                return obj
        return None


# ---------------------------------------------------------------------------------------------- loading


def _text(element: ET.Element, tag: str, source: str, *, required: bool = True) -> str:
    child = element.find(tag)
    if child is None:
        if required:
            raise ModelError(f"{source}: <{tag.replace('{' + EMU_NS + '}', 'emu:')}> is missing")
        return ""
    return (child.text or "").strip()


def _int(text: str, what: str, source: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ModelError(f"{source}: {what} {text!r} is not an integer") from None


def _parse_int_range(text: str, source: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", text)
    if not match:
        raise ModelError(f"{source}: range {text!r} is not of the form min..max")
    low, high = int(match.group(1)), int(match.group(2))
    if low > high:
        raise ModelError(f"{source}: range {text!r} is empty")
    return low, high


def _parse_lengths(text: str, source: str) -> tuple[int, int] | frozenset[int]:
    if ".." in text:
        return _parse_int_range(text, source)
    try:
        sizes = frozenset(int(part) for part in text.split(","))
    except ValueError:
        raise ModelError(f"{source}: lengths {text!r} are neither min..max nor a list of sizes") from None
    if not sizes or min(sizes) < 0:
        raise ModelError(f"{source}: lengths {text!r} are not valid")
    return sizes


def _enum(kind: type[enum.Enum], text: str, what: str, source: str) -> enum.Enum:
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ModelError(f"{source}: {what} {text!r} is not one of {allowed}") from None


def _make_form(
    alias: str, type_text: str, encoding_text: str, range_text: str, printable: bool, source: str
) -> Form:
    value_type = _enum(ValueType, type_text, "Type", source)
    encoding = _enum(Encoding, encoding_text, "emu:Encoding", source)
    assert isinstance(value_type, ValueType) and isinstance(encoding, Encoding)
    int_range = lengths = None
    if range_text:
        if value_type is ValueType.INTEGER:
            int_range = _parse_int_range(range_text, source)
        elif value_type in (ValueType.STRING, ValueType.OPAQUE):
            lengths = _parse_lengths(range_text, source)
    compatible = {
        ValueType.STRING: {Encoding.ASCII},
        ValueType.INTEGER: {Encoding.UINT8, Encoding.UINT16, Encoding.UINT32},
        ValueType.OPAQUE: {Encoding.BYTES},
        ValueType.NONE: {Encoding.NONE},
    }
    if encoding not in compatible[value_type]:
        raise ModelError(f"{source}: encoding {encoding.value!r} does not fit type {value_type.value!r}")
    if encoding is Encoding.UINT8 and int_range and not (int_range[0] >= 0 and int_range[1] <= 0xFF):
        raise ModelError(f"{source}: range {range_text!r} does not fit uint8")
    if encoding is Encoding.UINT16 and int_range and not (int_range[0] >= 0 and int_range[1] <= 0xFFFF):
        raise ModelError(f"{source}: range {range_text!r} does not fit uint16")
    if encoding is Encoding.UINT32 and int_range and not (int_range[0] >= 0 and int_range[1] <= 0xFFFFFFFF):
        raise ModelError(f"{source}: range {range_text!r} does not fit uint32")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", alias):
        raise ModelError(f"{source}: alias {alias!r} must be a lower-case slug")
    return Form(alias, value_type, encoding, int_range, lengths, printable)


def _parse_resource(item: ET.Element, source: str) -> ResourceDef:
    rid = _int(item.get("ID", ""), "Item ID", source)
    where = f"{source}: resource {rid}"
    if not 0 <= rid <= 0xFFFF:
        raise ModelError(f"{where}: id out of 0..65535")
    ops_text = _text(item, "Operations", where)
    if not set(ops_text) <= {"R", "W", "E"}:
        raise ModelError(f"{where}: Operations {ops_text!r} must use only R, W and E")
    operations = frozenset(Operation(ch) for ch in ops_text)
    behaviour = _enum(Behaviour, _text(item, f"{{{EMU_NS}}}Behaviour", where), "emu:Behaviour", where)
    assert isinstance(behaviour, Behaviour)
    printable = _text(item, f"{{{EMU_NS}}}Charset", where, required=False) == "printable-ascii"
    forms = [
        _make_form(
            _text(item, f"{{{EMU_NS}}}Alias", where),
            _text(item, "Type", where),
            _text(item, f"{{{EMU_NS}}}Encoding", where),
            _text(item, "RangeEnumeration", where, required=False),
            printable,
            where,
        )
    ]
    for extra in item.findall(f"{{{EMU_NS}}}Form"):
        forms.append(
            _make_form(
                extra.get("alias", ""),
                extra.get("type", ""),
                extra.get("encoding", ""),
                extra.get("range", ""),
                extra.get("charset") == "printable-ascii",
                where,
            )
        )
    default_el = item.find(f"{{{EMU_NS}}}Default")
    default = None if default_el is None else (default_el.text or "").strip()
    resource = ResourceDef(
        id=rid,
        name=_text(item, "Name", where),
        operations=operations,
        forms=tuple(forms),
        behaviour=behaviour,
        default=default,
        units=_text(item, "Units", where, required=False),
        description=_text(item, "Description", where, required=False),
        object_read=_text(item, f"{{{EMU_NS}}}ObjectRead", where, required=False) == "true",
    )
    if default is not None and default != "@instance" and resource.form.value_type is ValueType.INTEGER:
        # An integer default may sit below the writable range: it marks "not set yet" (iteration 0).
        _int(default, "emu:Default", where)
    if behaviour in (Behaviour.CREATE, Behaviour.ACTION) and operations != {Operation.EXECUTE}:
        raise ModelError(f"{where}: a {behaviour.value} resource must have Operations E only")
    if behaviour is Behaviour.CREDENTIAL and Operation.READ in operations:
        raise ModelError(f"{where}: a credential must not be readable")
    if operations & {Operation.WRITE, Operation.EXECUTE}:
        for form in resource.forms:
            if form.value_type in (ValueType.STRING, ValueType.OPAQUE) and form.lengths is None:
                # Request bodies are capped from these limits (codec.values.max_body_size).
                raise ModelError(f"{where}: writable form {form.alias!r} needs a length limit (a range)")
    return resource


def _parse_object(root: ET.Element, source: str) -> ObjectDef:
    obj_el = root.find("Object")
    if obj_el is None:
        raise ModelError(f"{source}: no <Object> element")
    oid = _int(_text(obj_el, "ObjectID", source), "ObjectID", source)
    where = f"{source}: object {oid}"
    multiple = _text(obj_el, "MultipleInstances", where) == "Multiple"
    range_text = _text(obj_el, f"{{{EMU_NS}}}InstanceRange", where, required=False)
    instance_range = _parse_int_range(range_text, where) if range_text else None
    if multiple and instance_range is None:
        raise ModelError(f"{where}: a multiple-instance object needs emu:InstanceRange")
    resources_el = obj_el.find("Resources")
    if resources_el is None:
        raise ModelError(f"{where}: <Resources> is missing")
    resources: dict[int, ResourceDef] = {}
    by_alias: dict[str, tuple[ResourceDef, Form]] = {}
    for item in resources_el.findall("Item"):
        resource = _parse_resource(item, where)
        if resource.id in resources:
            raise ModelError(f"{where}: resource {resource.id} is declared twice")
        resources[resource.id] = resource
        for form in resource.forms:
            if form.alias in by_alias:
                raise ModelError(f"{where}: alias {form.alias!r} is used twice")
            by_alias[form.alias] = (resource, form)
    alias = _text(obj_el, f"{{{EMU_NS}}}Alias", where, required=False) or None
    sync_text = _text(obj_el, f"{{{EMU_NS}}}Sync", where, required=False) or "outbox"
    if sync_text not in ("outbox", "none"):
        raise ModelError(f"{where}: emu:Sync {sync_text!r} is not 'outbox' or 'none'")
    return ObjectDef(
        id=oid,
        name=_text(obj_el, "Name", where),
        alias=alias,
        multiple=multiple,
        instance_range=instance_range,
        resources=resources,
        description=_text(obj_el, "Description1", where, required=False),
        forms_by_alias=by_alias,
        synced=sync_text == "outbox",
    )


def load_model(paths: Iterable[Path] | Path | None = None) -> DeviceModel:
    """Load and validate object definitions from XML files (or every ``*.xml`` in a directory)."""
    if paths is None:
        paths = DEFAULT_OBJECTS_DIR
    if isinstance(paths, Path):
        if not paths.is_dir():
            raise ModelError(f"{paths}: model directory not found")
        paths = sorted(paths.glob("*.xml"))
    objects: dict[int, ObjectDef] = {}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise ModelError(f"{path}: cannot read the model: {exc}") from None
        obj = _parse_object(root, str(path.name))
        if obj.id in objects:
            raise ModelError(f"{path.name}: object {obj.id} is declared twice")
        if obj.alias and any(o.alias == obj.alias for o in objects.values()):
            raise ModelError(f"{path.name}: object alias {obj.alias!r} is used twice")
        objects[obj.id] = obj
    if not objects:
        raise ModelError("the model directory holds no object definitions")
    return DeviceModel(objects=objects)


_DEFAULT: DeviceModel | None = None


def default_model() -> DeviceModel:
    """The model shipped in ``resources/objects`` (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_model()
    return _DEFAULT
