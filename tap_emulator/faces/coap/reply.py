"""A CoAP response as plain values, built by the face and sent by either path.

The face's rendering decides a response code, a payload and a few options (Content-Format, ETag,
Size1). Building an ``aiocoap.Message`` for that costs more than the rest of a plain GET (an option
object per option, set through aiocoap's descriptors), and the fast path would only take it apart
again to encode it. So the face answers with a ``Reply``: aiocoap's pipeline gets ``to_message()``,
and the fast path encodes ``wire_options()`` with the CoAP codec, the same bytes either way. Options
other than the three common ones are accepted under their aiocoap names and kept in an aiocoap
``Options``, so a rule that sets one works unchanged on both paths.
"""

from __future__ import annotations

from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.options import Options

from tap_emulator.codec.coap import uint_bytes

__all__ = ["Reply", "ReplyOptions"]

_ETAG, _CONTENT_FORMAT, _SIZE1 = 4, 12, 60
_OWN = frozenset({"content_format", "etag", "size1", "_others"})


class ReplyOptions:
    """``content_format``, ``etag`` and ``size1`` as plain values; any other aiocoap option name
    reads and writes a lazily made aiocoap ``Options``."""

    __slots__ = ("_others", "content_format", "etag", "size1")
    content_format: int | None
    etag: bytes | None
    size1: int | None
    _others: Options | None

    def __init__(self) -> None:
        object.__setattr__(self, "content_format", None)
        object.__setattr__(self, "etag", None)
        object.__setattr__(self, "size1", None)
        object.__setattr__(self, "_others", None)

    def _more(self) -> Options:
        if self._others is None:
            object.__setattr__(self, "_others", Options())
        return self._others

    def __getattr__(self, name: str) -> Any:  # only for names that are not slots
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._more(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._more(), name, value)

    def wire_options(self) -> list[tuple[int, bytes]]:
        """(number, encoded value) in ascending order, as aiocoap's ``option_list`` encodes them."""
        options: list[tuple[int, bytes]] = []
        if self.etag is not None:
            options.append((_ETAG, self.etag))
        if self.content_format is not None:
            options.append((_CONTENT_FORMAT, uint_bytes(int(self.content_format))))
        if self.size1 is not None:
            options.append((_SIZE1, uint_bytes(self.size1)))
        if self._others is not None:
            options += [(int(option.number), option.encode()) for option in self._others.option_list()]
            options.sort(key=lambda option: option[0])
        return options


class Reply:
    """A response code, payload and options; ``to_message`` gives aiocoap's equivalent."""

    __slots__ = ("code", "opt", "payload")

    def __init__(self, code: int, payload: bytes = b"") -> None:
        self.code = Code(code)
        self.payload = payload
        self.opt = ReplyOptions()

    def to_message(self) -> aiocoap.Message:
        message = aiocoap.Message(code=self.code, payload=self.payload)
        opt = self.opt
        if opt._others is not None:
            for option in opt._others.option_list():
                message.opt.add_option(option)
        if opt.content_format is not None:
            message.opt.content_format = opt.content_format
        if opt.etag is not None:
            message.opt.etag = opt.etag
        if opt.size1 is not None:
            message.opt.size1 = opt.size1
        return message
