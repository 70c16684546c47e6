"""The Labs service: Socket.IO v5 over Engine.IO v4, at the message level.

``engineio`` (the Engine.IO codec), ``socketio`` (the Socket.IO codec), ``answer`` (the Labs
request and the answer decoded from its progress events) and ``session`` (:class:`LabsSession`,
which runs them).  See the package docstring of :mod:`plabs_proto` for how they fit.
"""
