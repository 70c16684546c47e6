"""The byte level: every byte beneath a message-level session.

``client`` (the byte-level client that carries a session over streams), ``stack`` (the layers of
one stream: ``proxy`` tunnels and ``tls``), ``http`` (HTTP/1.1 by h11, ``inflate`` for coded
bodies), ``websocket`` (wsproto and permessage-deflate), ``browser`` (the headers a browser
sends) and ``trace`` (recording and replaying the bytes).
"""
