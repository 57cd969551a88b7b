"""The Tap-native face: the frames the IoTize Tap SDK sends, over TCP and WebSocket.

`session` is the sans-IO core (one `TapSession` per connection: login, SCRAM, encrypted channel,
session lifetime; everything else goes to the tree); `server` holds the thin transports and
`connections` what bounds them (caps, deadlines, keep-alive, the accept loop). The choices
made where the protocol spec is silent are listed in `session`'s docstring.
"""

from tap_emulator.faces.tap.server import TapServer, start_tcp_server, start_ws_server
from tap_emulator.faces.tap.session import TRACE_LOGGER, TapFace, TapSession

__all__ = ["TRACE_LOGGER", "TapFace", "TapServer", "TapSession", "start_tcp_server", "start_ws_server"]
