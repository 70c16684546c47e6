"""Hostile input shapes cost bounded memory and work: floods, tiny chunks, tiny fragments."""

from __future__ import annotations

import random

from peer import Harness, http_response, open_packet
from test_client import POLL_SID, post

from plabs_proto.client import ClientConfig, LabsClient


def _polling() -> Harness:
    h = Harness(LabsClient(ClientConfig(server="http://labs.test", transport="polling"), rng=random.Random(0)))
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet(upgrades=())))
    return h


def test_pings_while_the_post_is_stalled_queue_one_pong() -> None:
    """A flood of pings while a POST waits for its answer leaves one pong to send, not one per ping."""
    h = _polling()
    assert h.take(2) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')  # its answer does not come yet
    for _ in range(3):
        h.take(1)
        h.reply(1, http_response(200, "\x1e".join(["2"] * 5000)))
    assert h.take(2) == b""  # one POST at a time
    h.reply(2, http_response(200, "ok"))
    assert h.take(2) == post(POLL_SID, b"3")
    h.reply(1, http_response(200, "2"))  # a ping after that pong left gets its own
    h.reply(2, http_response(200, "ok"))
    assert h.take(2) == post(POLL_SID, b"3")
