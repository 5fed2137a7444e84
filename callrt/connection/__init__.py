"""One connection's protocol logic on each side, with no sockets: what the transport shells drive.

- :mod:`.server` — :class:`~callrt.connection.server.ServerConnection` (one accepted
  connection: handlers, replies, cancel, goaway, the hello) and the
  :class:`~callrt.connection.server.Server` state its connections share.
- :mod:`.client` — :class:`~callrt.connection.client.ClientSession` (one client
  socket: the call table, requests, cancels, keepalive, the hello reply).

Each takes its shell as an I/O interface (``ServerIO`` / ``ClientIO``), as
httpcore composes an h11 connection with a network stream.
"""
