"""An incremental Server-Sent Events decoder (the WHATWG ``text/event-stream`` rules).

Feed the body's bytes as they come, in pieces of any size, to :meth:`SSEDecoder.feed`;
it returns the events completed so far.  Call :meth:`SSEDecoder.end` when the body
ends: an event not closed by a blank line is dropped (as the specification says),
and ``end()`` tells whether that happened.

The rules followed (HTML Living Standard, "Server-sent events", parsing an event stream):

* the bytes are UTF-8; one leading BOM is dropped; bytes that are not UTF-8 are
  refused with :class:`~plabs_proto.errors.RemoteProtocolError` (the specification
  replaces them; a stream that carries JSON has no use for replaced characters);
* lines end with CRLF, LF or CR (a CR at the end of one piece and an LF at the start
  of the next are one line end);
* a blank line dispatches the event; a line starting with ``:`` is a comment;
* ``field:value`` (one space after the colon dropped) or ``field`` alone (empty value);
  ``event`` sets the type, ``data`` adds a line to the data (joined with ``"\\n"``),
  ``id`` sets the last event id (unless it holds NUL), ``retry`` sets the reconnection
  time when it is ASCII digits only (at most 18 of them); other fields are ignored;
* an event with no ``data`` line is not dispatched (its type is forgotten).

Cost: an event as the ask service sends it (``event: TYPE`` CRLF ``data: DATA`` CRLF CRLF,
no other CR or LF in it) is taken whole, with a few ``str.find`` calls (memchr); anything
else goes line by line.  :meth:`SSEDecoder.feed_raw` hands out plain tuples, for a caller
that reads many events (building a frozen :class:`SSEEvent` costs more than the rest).

Bounded: a line longer than ``max_line`` characters, or an event whose data is longer
than ``max_data`` characters, is refused when its first character past the limit
arrives, so memory stays within the limits whatever the bytes.  Time is linear in the
input: a long line fed one byte at a time is kept as a list of pieces, joined once.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DEFAULT_MAX_DATA", "DEFAULT_MAX_LINE", "Raw", "SSEDecoder", "SSEEvent"]

DEFAULT_MAX_DATA = 16 * 1024 * 1024
"""Longest data of one event, in characters (a 1 MiB answer's frame is about 1.2 Mi)."""

DEFAULT_MAX_LINE = DEFAULT_MAX_DATA + 1024
"""Longest line, in characters, without its line end (a ``data:`` line holds a whole frame)."""

_LINE_END = re.compile(r"\r\n|\r|\n")
_MESSAGE = "event: message\r\ndata: "  # how the common event starts
# While every CR is part of a CRLF (the common case), the line ends are found by str.find of LF (memchr,
# many times faster than _LINE_END's scan on long lines), and each line is checked for a CR with another.


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEEvent:
    """One dispatched event.

    ``event`` is the type (``"message"`` when the stream named none), ``data`` the
    data lines joined with ``"\\n"``, ``id`` the last event id the stream set (it
    persists from event to event, as in the specification; ``None`` when never set),
    ``retry`` the reconnection time in milliseconds set since the previous event
    (``None`` when none was).
    """

    event: str = "message"
    data: str
    id: str | None = None
    retry: int | None = None


Raw = tuple[str, str, str | None, int | None]
"""An event as :meth:`SSEDecoder.feed_raw` hands it out: ``(event, data, id, retry)``, as in :class:`SSEEvent`."""


class SSEDecoder:
    """Turns the bytes of a ``text/event-stream`` body into :class:`SSEEvent` objects."""

    __slots__ = (
        "_after_cr",
        "_data",
        "_data_len",
        "_decoder",
        "_done",
        "_event",
        "_id",
        "_line",
        "_line_len",
        "_pending",
        "_retry",
        "_started",
        "max_data",
        "max_line",
        "retry",
    )

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, max_data: int = DEFAULT_MAX_DATA) -> None:
        if max_line < 1 or max_data < 0:
            raise LocalProtocolError(
                f"expected max_line >= 1 and max_data >= 0, got max_line={max_line}, max_data={max_data}"
            )
        self.max_line = max_line
        self.max_data = max_data
        self.retry: int | None = None
        """The reconnection time (milliseconds) the stream set last, or None."""
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._started = False  # the BOM check is done
        self._after_cr = False  # the last piece ended with CR: an LF next is part of that line end
        self._line: list[str] = []
        self._line_len = 0
        self._data: list[str] = []
        self._data_len = 0  # characters of the data so far, "\n" between lines counted
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None  # set since the last dispatch
        self._pending = False  # a field line came since the last blank line
        self._done = False  # end() was called, or an error was raised

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Take the next bytes of the body; return the events they complete (possibly none).

        Raises :class:`RemoteProtocolError` for bytes that are not UTF-8 or a line or
        data past its limit; the decoder takes nothing more after that.
        """
        return [SSEEvent(event=event, data=text, id=id, retry=retry) for event, text, id, retry in self.feed_raw(data)]

    def feed_raw(self, data: bytes) -> list[Raw]:
        """As :meth:`feed`, each event as a plain tuple ``(event, data, id, retry)`` (a :data:`Raw`).

        For a caller that reads many events and keeps none: a tuple costs a fraction of
        a frozen :class:`SSEEvent` to build.
        """
        if self._done:
            raise LocalProtocolError(f"expected no feed() after end() or an error, got {len(data)} more bytes")
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            self._done = True
            raise RemoteProtocolError(
                f"expected UTF-8 in the event stream, got {exc.object[exc.start : exc.start + 4]!r} ({exc.reason})"
            ) from None
        return self._text(text)

    def end(self) -> bool:
        """The body ended: drop any unfinished event; return True if one was dropped.

        True means the stream ended mid-event: an unfinished line, or field lines
        not closed by a blank line.  Raises :class:`RemoteProtocolError` when the body
        ended inside a UTF-8 sequence.
        """
        if self._done:
            raise LocalProtocolError("expected one end() and no end() after an error, got another")
        self._done = True
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"expected the event stream to end after a whole UTF-8 sequence, got {exc.object!r} at its end"
            ) from None
        unfinished = self._pending or self._line_len > 0
        self._line = []
        self._data = []
        return unfinished

    def _fail(self, message: str) -> RemoteProtocolError:
        self._done = True
        self._line = []
        self._data = []
        return RemoteProtocolError(message)

    def _text(self, text: str) -> list[Raw]:
        if not text:
            return []
        start = 0
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                start = 1
        if self._after_cr:
            self._after_cr = False
            if text[start : start + 1] == "\n":
                start += 1
        events: list[Raw] = []
        max_line = self.max_line
        find = text.find
        lf_only = True  # until a lone CR is seen, every line end is LF or CRLF: str.find (memchr) finds them
        whole = max_line >= 14  # (the line "event: message" is within the limit)
        while True:
            if lf_only and not self._pending and not self._line_len:
                # An event as the service sends it, whole in this text: [event: TYPE CRLF] data: DATA CRLF CRLF,
                # no other CR or LF; taken at once (its line ends found by memchr), as the lines below would take it.
                kind = "message"
                if whole and text.startswith(_MESSAGE, start):  # (the common event: its type needs no reading)
                    at = start + 22  # where the data starts, after "data: "
                elif text.startswith("data: ", start):
                    at = start + 6
                elif text.startswith("event: ", start):
                    at = find("\n", start) + 7
                    kind = text[start + 7 : at - 8]
                    if (
                        at < start + 15
                        or text[at - 8] != "\r"
                        or at - 8 - start > max_line
                        or "\r" in kind
                        or not text.startswith("data: ", at - 6)
                    ):
                        at = -1
                    elif not kind:
                        kind = "message"
                else:
                    at = -1
                if at >= 0:
                    lf = find("\n", at)
                    stop = lf - 1  # where the data ends, before its CRLF
                    if (
                        lf > at
                        and text[stop] == "\r"
                        and text.startswith("\r\n", lf + 1)
                        and stop - at + 6 <= max_line
                        and stop - at <= self.max_data
                        and find("\r", at, stop) < 0
                    ):
                        retry = self._retry
                        if retry is not None:
                            self._retry = None
                        events.append((kind, text[at:stop], self._id, retry))
                        start = lf + 3
                        continue
            if lf_only:
                lf = find("\n", start)
                if lf < 0:
                    if find("\r", start) >= 0:
                        lf_only = False  # a CR ends a line in what is left
                        continue
                    break
                end = lf - 1 if lf > start and text[lf - 1] == "\r" else lf
                if find("\r", start, end) >= 0:
                    lf_only = False  # a lone CR ends a line before this LF
                    continue
                after = lf + 1
            else:
                match = _LINE_END.search(text, start)
                if match is None:
                    break
                end, after = match.span()
            if self._line_len:  # the line began in an earlier piece
                self._add(text, start, end)
                line = self._line[0] if len(self._line) == 1 else "".join(self._line)
                self._line = []
                self._line_len = 0
            elif end - start > max_line:
                raise self._fail(f"expected a line of at most {max_line} characters, got {end - start} or more")
            else:
                line = text[start:end]
            start = after
            if line[:6] == "data: ":  # (the common line, as _field takes it)
                self._pending = True
                size = self._data_len + len(line) - 6 + (1 if self._data else 0)
                if size > self.max_data:
                    raise self._fail(f"expected an event's data of at most {self.max_data} characters, got {size}")
                self._data.append(line[6:])
                self._data_len = size
            elif not line:
                self._pending = False
                if self._data:
                    events.append(self._event_now())
                else:
                    self._event = ""
            elif line[:7] == "event: ":
                self._pending = True
                self._event = line[7:]
            elif line[0] != ":":  # (a comment is skipped)
                self._field(line)
        if start < len(text):
            self._add(text, start, len(text))
        elif text[-1] == "\r":
            self._after_cr = True
        return events

    def _add(self, text: str, start: int, end: int) -> None:
        if end <= start:
            return
        size = self._line_len + end - start
        if size > self.max_line:
            raise self._fail(f"expected a line of at most {self.max_line} characters, got {size} or more")
        self._line.append(text[start:end] if start or end != len(text) else text)
        self._line_len = size

    def _field(self, line: str) -> None:
        """A field line (not blank, not a comment) in the specification's words."""
        self._pending = True
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            size = self._data_len + len(value) + (1 if self._data else 0)
            if size > self.max_data:
                raise self._fail(f"expected an event's data of at most {self.max_data} characters, got {size}")
            self._data.append(value)
            self._data_len = size
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        elif field == "retry" and value and len(value) <= 18 and value.isascii() and value.isdigit():
            # (more than 18 digits is no time anyone waits for, and int() of a huge string is slow)
            self._retry = self.retry = int(value)

    def _event_now(self) -> Raw:
        """The event of the data held (there is some), dispatched."""
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        event = (self._event or "message", data, self._id, self._retry)
        self._data = []
        self._data_len = 0
        self._event = ""
        self._retry = None
        return event
