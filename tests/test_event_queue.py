"""The queue every session hands its events out of (:class:`plabs_proto.events.EventQueue`): first in,
first out, whether taken one at a time, all at once, or both in turn, with events added in between."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from plabs_proto.events import EventQueue, TextDelta


class Queue(EventQueue):
    """A session's view: it adds events as its inputs bring them."""

    def add(self, *events: TextDelta) -> None:
        self._events.extend(events)


def delta(n: int) -> TextDelta:
    return TextDelta(text=str(n))


def test_one_at_a_time_then_all_at_once() -> None:
    queue = Queue()
    assert queue.next_event() is None and queue.events() == []
    queue.add(delta(1), delta(2), delta(3))
    assert queue.next_event() == delta(1)
    queue.add(delta(4))
    assert queue.events() == [delta(2), delta(3), delta(4)]
    assert queue.next_event() is None and queue.events() == []
    queue.add(delta(5))
    assert queue.next_event() == delta(5) and queue.next_event() is None


def test_a_list_handed_out_is_the_callers() -> None:
    queue = Queue()
    queue.add(delta(1))
    taken = queue.events()
    queue.add(delta(2))
    assert taken == [delta(1)] and queue.events() == [delta(2)]


@given(st.lists(st.one_of(st.integers(1, 5), st.just(0), st.just(-1)), max_size=60))
def test_any_interleaving_is_first_in_first_out(steps: list[int]) -> None:
    """n > 0: add n events; 0: take one; -1: take all.  What comes out is what went in, in order."""
    queue = Queue()
    added = taken = 0
    out: list[TextDelta] = []
    for step in steps:
        if step > 0:
            queue.add(*(delta(added + i) for i in range(step)))
            added += step
        elif step == 0:
            event = queue.next_event()
            assert (event is None) == (taken == added)
            if event is not None:
                out.append(event)
                taken += 1
        else:
            events = queue.events()
            out += events
            taken += len(events)
            assert taken == added
    out += queue.events()
    assert out == [delta(i) for i in range(added)]
