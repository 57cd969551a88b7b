"""The CoAP face (aiocoap): every object of the model at ``/{object}/{instance}/{resource}`` and alias paths.

A thin adapter. Paths, allowed methods, content formats, discovery links and observability are all
derived from the model; every request becomes a tree request, and every tree change event notifies the
observers of the paths it touched. No business rule lives here.

Paths (derived from the model):
- ``/1025``, ``/1025/{g}``, ``/1025/{g}/{r}``: object, instance and resource of a multi-instance object;
- ``/group``, ``/group/{g}``, ``/group/{g}/{slug}``: the same through the object and resource alias slugs;
  a slug names one form (``password`` takes text, ``password-key`` takes bytes);
- ``/3/0/{r}``, ``/3//{r}`` and ``/device/{slug}``: single-instance objects (instance 0 or empty);
- ``/.well-known/core``: every resource and alias path with ``rt``, ``if`` and ``ct``.
"""

from tap_emulator.faces.coap.limits import CoapLimits
from tap_emulator.faces.coap.server import CoapFace, start_coap_server

__all__ = ["CoapFace", "CoapLimits", "start_coap_server"]
