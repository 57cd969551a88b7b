"""Links the device announces, built from the model and the live instances: ``/.well-known/core``
(RFC 6690, with its query filters), LwM2M Discover (TS 1.1 Core section 5.4.2) and the object links
of an LwM2M Register.

Every target is a concrete URI reference (``</1025/7/0>``, ``</group/7/name>``): RFC 6690 links must
be, so a generic client can follow each one. Sans-IO apart from the callables it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tap_emulator.codec.lwm2m import LWM2M_FORMATS
from tap_emulator.codec.values import VALUE_FORMATS
from tap_emulator.faces.coap.attributes import AttributeStore
from tap_emulator.model import Behaviour, DeviceModel, ObjectDef, Operation, ResourceDef

__all__ = ["Link", "discover", "filter_links", "registration_links", "render_links", "well_known_links"]

_INTERFACE = {Operation.READ: "core.rp", Operation.WRITE: "core.p", Operation.EXECUTE: "core.a"}
_CONTAINER_CT = " ".join(str(cf) for cf in LWM2M_FORMATS)
_VALUE_CT = " ".join(str(cf) for cf in (*VALUE_FORMATS, *LWM2M_FORMATS))
# Query filters RFC 6690 section 4.1 lets a client give (one or more, all must match).
_FILTERABLE = frozenset({"href", "rt", "if", "ct", "obs", "anchor", "rel", "title"})


@dataclass(frozen=True, slots=True)
class Link:
    target: str
    params: tuple[tuple[str, str | None], ...]  # (name, value) or (name, None) for a bare flag

    def render(self) -> str:
        out = [f"<{self.target}>"]
        for name, value in self.params:
            if value is None:
                out.append(name)
            elif " " in value or not value.replace(".", "").replace("-", "").isalnum():
                out.append(f'{name}="{value}"')
            else:
                out.append(f"{name}={value}")
        return ";".join(out)


def render_links(links: Iterable[Link]) -> bytes:
    return ",".join(link.render() for link in links).encode("utf-8")


def _listed(resource: ResourceDef) -> bool:
    return resource.behaviour is not Behaviour.SESSION


def _resource_params(obj: ObjectDef, resource: ResourceDef, slug: str) -> tuple[tuple[str, str | None], ...]:
    interfaces = " ".join(_INTERFACE[op] for op in sorted(resource.operations, key=lambda o: o.value))
    params: list[tuple[str, str | None]] = [
        ("rt", f"tap.{obj.alias or obj.id}.{slug}"),
        ("if", interfaces),
        ("ct", _VALUE_CT if resource.form.value_type.value else "0"),
    ]
    if resource.readable:
        params.append(("obs", None))
    return tuple(params)


def well_known_links(model: DeviceModel, instance_ids: Callable[[ObjectDef], Sequence[int]]) -> list[Link]:
    """Every object, instance and resource, canonical and by alias, in id order."""
    links: list[Link] = []
    for obj in sorted(model.objects.values(), key=lambda o: o.id):
        kind = obj.alias or str(obj.id)
        container = (("if", "core.b"), ("ct", _CONTAINER_CT), ("obs", None))
        links.append(Link(f"/{obj.id}", (("rt", f"tap.{kind}"), *container)))
        resources = [r for r in sorted(obj.resources.values(), key=lambda r: r.id) if _listed(r)]
        for iid in instance_ids(obj):
            links.append(Link(f"/{obj.id}/{iid}", (("rt", f"tap.{kind}.instance"), *container)))
            for res in resources:
                links.append(Link(f"/{obj.id}/{iid}/{res.id}", _resource_params(obj, res, res.form.alias)))
            if obj.alias:
                for res in resources:
                    for form in res.forms:
                        links.append(
                            Link(f"/{obj.alias}/{iid}/{form.alias}", _resource_params(obj, res, form.alias))
                        )
    return links


def _matches(link: Link, name: str, pattern: str) -> bool:
    prefix = pattern.endswith("*")
    wanted = pattern[:-1] if prefix else pattern

    def hit(value: str) -> bool:
        return value.startswith(wanted) if prefix else value == wanted

    if name == "href":
        return hit(link.target)
    for param, value in link.params:
        if param != name:
            continue
        if value is None:
            return pattern == ""
        # A space-separated value (rt, if, ct) matches when any of its parts does (RFC 6690 4.1).
        return hit(value) or any(hit(part) for part in value.split(" "))
    return False


def filter_links(links: Iterable[Link], queries: Sequence[str]) -> list[Link] | str:
    """Links that every ``name=value`` query matches (a trailing ``*`` matches a prefix); a diagnostic
    string for a query that is no filter."""
    filters: list[tuple[str, str]] = []
    for query in queries:
        name, _, pattern = query.partition("=")
        if name not in _FILTERABLE:
            return f"{name!r} is not a link attribute to filter on"
        filters.append((name, pattern))
    return [link for link in links if all(_matches(link, n, p) for n, p in filters)]


def discover(
    obj: ObjectDef,
    instance_id: int | None,
    resource_id: int | None,
    instance_ids: Sequence[int],
    attributes: AttributeStore,
) -> list[Link]:
    """LwM2M Discover: on an object its link and those of its instances and their resources; on an
    instance its link and its resources'; on a resource its link alone, with the attributes it
    inherits. Each link carries the attributes set at its level."""

    def params(
        path: tuple[int, int | None, int | None], *, inherited: bool = False
    ) -> tuple[tuple[str, str | None], ...]:
        own = attributes.effective(path) if inherited else attributes.own(path)
        pairs = own.link_params().split(";")[1:]
        return tuple((name, value) for name, _, value in (p.partition("=") for p in pairs))

    resources = [r for r in sorted(obj.resources.values(), key=lambda r: r.id) if _listed(r)]
    multiple = obj.multiple
    label = (lambda i: i) if multiple else (lambda _i: 0)
    if resource_id is not None:
        iid = label(instance_id)
        return [
            Link(f"/{obj.id}/{iid}/{resource_id}", params((obj.id, instance_id, resource_id), inherited=True))
        ]
    scope = [instance_id] if instance_id is not None or not multiple else list(instance_ids)
    links: list[Link] = []
    if instance_id is None:
        links.append(Link(f"/{obj.id}", params((obj.id, None, None))))
    for iid in scope:
        links.append(Link(f"/{obj.id}/{label(iid)}", params((obj.id, iid, None))))
        links += [Link(f"/{obj.id}/{label(iid)}/{r.id}", params((obj.id, iid, r.id))) for r in resources]
    return links


def registration_links(model: DeviceModel, instance_ids: Callable[[ObjectDef], Sequence[int]]) -> bytes:
    """The object links of a Register or Update: ``</1025/0>,</3/0>`` (TS 1.1 Transport 6.1.6)."""
    links = []
    for obj in sorted(model.objects.values(), key=lambda o: o.id):
        ids = list(instance_ids(obj))
        links += [Link(f"/{obj.id}/{iid}", ()) for iid in ids] if ids else [Link(f"/{obj.id}", ())]
    return render_links(links)
