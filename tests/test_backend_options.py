"""The shared, I/O-free pieces of the backends (``plabs_proto.backends._config`` and ``._errors``)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peer import Harness
from plabs_proto.backends import _config, _errors, _text

from plabs_proto.config import ClientConfig
from plabs_proto.errors import (
    AnswerRewrittenError,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Closed,
    Connected,
    Event,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.labs.answer import MODELS, AnswerDecoder
from plabs_proto.perplexity import request as perplexity_request
from plabs_proto.wire.trace import TraceRecorder


def config(**overrides: Any) -> ClientConfig:
    return _config.parse_options({"server": "https://labs.test", **overrides}, with_model=False).config


def test_timeout_maps_to_query_and_caps_connect() -> None:
    cfg = config(timeout=12.5)
    assert (cfg.query_timeout, cfg.connect_timeout) == (12.5, 12.5)
    cfg = config(timeout=300)
    assert (cfg.query_timeout, cfg.connect_timeout) == (300.0, _config.CONNECT_TIMEOUT)
    cfg = config(timeout=None)
    assert (cfg.query_timeout, cfg.connect_timeout) == (None, _config.CONNECT_TIMEOUT)
    assert cfg.first_text_timeout == ClientConfig().first_text_timeout


def test_named_config_fields_win_over_the_mapping() -> None:
    cfg = config(timeout=5, connect_timeout=1, first_text_timeout=0.5, query_timeout=None)
    assert (cfg.connect_timeout, cfg.first_text_timeout, cfg.query_timeout) == (1.0, 0.5, None)
    cfg = config(origin="https://o.test", jwt="j", version="9.9", user_agent="ua", path="/sio/", tls=False,
                 max_message_size=4096)
    assert (cfg.origin, cfg.jwt, cfg.version, cfg.user_agent, cfg.path, cfg.tls, cfg.max_message_size) == (
        "https://o.test", "j", "9.9", "ua", "/sio/", False, 4096
    )


def test_max_message_size_is_the_receive_limit_none_keeps_the_default() -> None:
    assert config().max_message_size == config(max_message_size=None).max_message_size == 64 * 1024 * 1024
    assert config(max_message_size=1).max_message_size == 1


def test_compression_switches_reach_the_config() -> None:
    assert config().accept_encoding is True and config().permessage_deflate is True
    off = _config.parse_options({"accept_encoding": False, "permessage_deflate": False}, with_model=False).config
    assert off.accept_encoding is False and off.permessage_deflate is False


def test_headers_from_a_mapping_or_pairs() -> None:
    assert config(headers={"X-A": "1", "X-B": "2"}).headers == (("X-A", "1"), ("X-B", "2"))
    assert config(headers=[("X-A", "1"), ("X-A", "2")]).headers == (("X-A", "1"), ("X-A", "2"))
    assert config(headers=(pair for pair in [("X-A", "1")])).headers == (("X-A", "1"),)
    assert config(headers=None).headers == config().headers == ()
    with pytest.raises(LocalProtocolError, match="expected the 'X-A' header as ASCII text"):
        config(headers=[("X-A", 1)])
    with pytest.raises(LocalProtocolError, match="expected the 'X-A' header as ASCII text"):
        config(headers={"X-A": None})
    with pytest.raises(LocalProtocolError, match=r"expected each of headers as a \(name, value\) tuple, got 'X-A: 1'"):
        config(headers=["X-A: 1"])
    with pytest.raises(LocalProtocolError, match=r"expected headers as a tuple of \(name, value\) tuples, got 'X-A: 1'"):
        config(headers="X-A: 1")
    with pytest.raises(LocalProtocolError, match=r"expected headers as a tuple of \(name, value\) tuples, got 5"):
        config(headers=5)


def test_the_options_are_the_config_fields_and_timeout_tracer_seed() -> None:
    fields = {field.name for field in dataclasses.fields(ClientConfig)}
    assert _config.SessionOptions.__optional_keys__ == fields | {"timeout", "tracer", "seed"}
    assert _config.AskOptions.__optional_keys__ == fields | {"timeout", "tracer", "seed", "model"}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("timeout", 0, "timeout"),
        ("timeout", -1, "timeout"),
        ("timeout", True, "timeout"),
        ("timeout", "10", "timeout"),
        ("first_text_timeout", 0, "first_text_timeout"),
        ("connect_timeout", "1", "connect_timeout"),
        ("jwt", 5, "jwt"),
        ("tls", "yes", "tls"),
        ("max_message_size", 0, "max_message_size"),
        ("max_message_size", True, "max_message_size"),
        ("server", b"https://x", "server URL"),
        ("proxy", 8080, "proxy"),
        ("accept_encoding", 1, "expected accept_encoding as True or False, got 1"),
        ("permessage_deflate", None, "expected permessage_deflate as True or False, got None"),
    ],
)
def test_bad_values_are_refused(name: str, value: object, expected: str) -> None:
    with pytest.raises(LocalProtocolError, match=expected):
        config(**{name: value})


def test_unknown_keyword_is_refused_with_the_allowed_list() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        config(temperature=0.2, stream=True)
    message = str(caught.value)
    assert "'stream', 'temperature'" in message
    assert "first_text_timeout" in message and "max_message_size" in message


def test_to_messages() -> None:
    assert _config.to_messages("hi") == [{"role": "user", "content": "hi"}]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert _config.to_messages(messages) == messages
    for bad in (b"hi", {"role": "user", "content": "hi"}, 42, None):
        with pytest.raises(LocalProtocolError, match="expected the messages as a str"):
            _config.to_messages(bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="message 0: expected 'role'"):
        _config.to_messages([{"role": "robot", "content": "beep"}])


def test_make_rng() -> None:
    rng, seed = _config.make_rng(None, 1234)
    assert seed == 1234 and rng.getrandbits(64) == random.Random(1234).getrandbits(64)
    rng, seed = _config.make_rng(None, None)
    assert isinstance(rng, random.SystemRandom) and seed is None

    def tracer(now: float, stream_id: int, direction: str, data: bytes) -> None:
        pass

    rng, seed = _config.make_rng(tracer, None)
    assert seed is not None and 0 <= seed < 2**128
    assert type(rng) is random.Random and rng.getrandbits(64) == random.Random(seed).getrandbits(64)
    seeds = {_config.make_rng(tracer, None)[1] for _ in range(5)}
    assert len(seeds) == 5
    with pytest.raises(LocalProtocolError, match="seed"):
        _config.make_rng(None, True)


def test_announce_seed_reaches_a_trace_recorder() -> None:
    calls: list[tuple[float, int, str, bytes]] = []
    _config.announce_seed(lambda *args: calls.append(args), 42, 3.5)
    _config.announce_seed(lambda *args: calls.append(args), None, 3.5)
    _config.announce_seed(None, 42, 3.5)
    assert calls == [(3.5, 0, "seed", b"42")]
    recorder = TraceRecorder({"plabs_trace": 1})
    _config.announce_seed(recorder, 2**100 + 7, 0.0)
    assert recorder.header["seed"] == 2**100 + 7


def test_stream_error_names_the_hop_and_the_partial_text() -> None:
    error = _errors.stream_error(
        ConnectionResetError(104, "Connection reset by peer"),
        action="receive from",
        host="proxy.test",
        port=3128,
        proxied=True,
        partial_text="Hello",
        partial_reasoning="hmm",
    )
    assert type(error) is NetworkError
    assert (error.host, error.port, error.errno) == ("proxy.test", 3128, 104)
    assert isinstance(error.__cause__, ConnectionResetError)
    assert str(error) == (
        "expected to receive from the proxy at proxy.test:3128, but the connection failed after 5 characters "
        "of the answer (ConnectionResetError: [Errno 104] Connection reset by peer)"
    )
    assert (error.partial_text, error.partial_reasoning) == ("Hello", "hmm")
    error = _errors.stream_error(OSError("boom"), action="connect to", host="::1", port=443, proxied=False)
    assert str(error) == "expected to connect to the server at [::1]:443, but the connection failed (OSError: boom)"
    assert (error.host, error.port, error.errno) == ("::1", 443, None)


def test_check_event() -> None:
    assert _errors.check_event(AnswerFinished(model="m", text="t", reasoning=""), partial_text="", partial_reasoning="")
    assert not _errors.check_event(TextDelta(text="t"), partial_text="", partial_reasoning="")
    assert not _errors.check_event(ReasoningDelta(text="t"), partial_text="", partial_reasoning="")
    failed = QueryFailed(model="sonar", message="Error in processing query", partial_text="par")
    with pytest.raises(ResponseError) as caught:
        _errors.check_event(failed, partial_text="", partial_reasoning="")
    assert (caught.value.server_text, caught.value.partial_text) == ("Error in processing query", "par")
    with pytest.raises(RemoteProtocolError, match="session ended: bye") as ended:
        _errors.check_event(Closed(reason="bye"), partial_text="abc", partial_reasoning="")
    assert ended.value.partial_text == "abc"


# -- what a text-only API yields ----------------------------------------------------------------------


def yielded_by(events: list[Event]) -> str:
    """What ``ask`` yields for these events of one query (ending with AnswerFinished)."""
    answer = _text.AnswerText()
    out = [answer.take(event) for event in events[:-1]]
    finished = events[-1]
    assert isinstance(finished, AnswerFinished)
    out.append(answer.finish(finished))
    return "".join(out)


def finished(text: str, reasoning: str = "") -> AnswerFinished:
    return AnswerFinished(model="r1-1776", text=text, reasoning=reasoning)


def test_answer_text_follows_deltas_and_revisions_that_keep_it() -> None:
    events: list[Event] = [
        ReasoningDelta(text="Hi"),
        AnswerRevised(text="", reasoning=""),  # the reasoning taken back, not the text
        TextDelta(text="Hi"),
        TextDelta(text=" there"),
        finished("Hi there"),
    ]
    assert yielded_by(events) == "Hi there"


def test_answer_text_yields_what_a_revision_adds() -> None:
    # a revision that extends what was yielded (a decoder that sends the text whole) loses nothing
    assert yielded_by([TextDelta(text="Hi"), AnswerRevised(text="Hi there", reasoning=""), finished("Hi there")]) == (
        "Hi there"
    )


def test_answer_text_never_ends_quietly_with_another_answer() -> None:
    # even without a revision: the final answer is checked against what was yielded
    with pytest.raises(AnswerRewrittenError, match="differs from them at character 1") as caught:
        yielded_by([TextDelta(text="Hello"), finished("Hallo", reasoning="r")])
    assert (caught.value.text, caught.value.reasoning, caught.value.yielded) == ("Hallo", "r", "Hello")
    assert (caught.value.partial_text, caught.value.partial_reasoning) == ("Hallo", "r")
    # a final answer shorter than what was yielded is a rewrite too
    with pytest.raises(AnswerRewrittenError, match="begin with the 5 characters"):
        yielded_by([TextDelta(text="Hello"), finished("Hell")])


def test_answer_text_holds_back_after_a_rewrite_until_it_can_go_on() -> None:
    answer = _text.AnswerText()
    assert answer.take(TextDelta(text="Hello wor")) == "Hello wor"
    assert answer.take(AnswerRevised(text="Hello", reasoning="")) == ""  # a rewrite: wait
    assert answer.take(TextDelta(text=" w")) == ""  # the text now is "Hello w": still not ours
    assert answer.finish(finished("Hello world")) == "ld"  # the final answer goes on from it
    assert answer.yielded == "Hello world"


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(MODELS),
    st.lists(st.text(alphabet="ab </think>\n", max_size=20), max_size=6),
    st.text(alphabet="ab </think>\n", max_size=20),
)
def test_answer_text_ends_with_the_final_answer_or_raises(model: str, outputs: list[str], final: str) -> None:
    decoder = AnswerDecoder(model)
    events: list[Event] = []
    for output in outputs:
        events.extend(decoder.feed({"output": output}))
    events.extend(decoder.feed({"output": final, "final": True}))
    last = events[-1]
    assert isinstance(last, AnswerFinished)
    answer = _text.AnswerText()
    pieces = [answer.take(event) for event in events[:-1]]
    try:
        pieces.append(answer.finish(last))
    except AnswerRewrittenError as error:
        assert error.yielded == "".join(pieces)
        assert not last.text.startswith(error.yielded)
        assert (error.text, error.reasoning) == (last.text, last.reasoning)
    else:
        assert "".join(pieces) == last.text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab </think>\n", max_size=30), st.lists(st.integers(min_value=0, max_value=30), max_size=8))
def test_answer_text_of_a_cumulative_default_model_stream_is_the_final_answer(output: str, cuts: list[int]) -> None:
    # The usual stream (each output extends the last) on the default model: text is only
    # ever reported after "</think>", so none is rewritten, with or without reasoning.
    decoder = AnswerDecoder("r1-1776")
    events: list[Event] = []
    for cut in sorted(cuts):
        events.extend(decoder.feed({"output": output[:cut]}))
    events.extend(decoder.feed({"output": output, "final": True}))
    last = events[-1]
    assert isinstance(last, AnswerFinished)
    assert yielded_by(events) == last.text
def test_the_options_are_the_config_fields_plus_the_backend_ones() -> None:
    # One definition: every ClientConfig field but the ones the core fills itself is an option,
    # and ask takes exactly connect's options plus the model.
    fields = {f.name for f in dataclasses.fields(ClientConfig)}
    session = _config.SessionOptions.__optional_keys__
    assert session == fields | {"timeout", "tracer", "seed"}
    assert _config.AskOptions.__optional_keys__ == session | {"model"}


def test_parse_options_applies_the_defaults_of_the_core() -> None:
    from plabs_proto import config as client
    from plabs_proto.labs import answer as labs

    opts = _config.parse_options({}, with_model=True)
    assert opts.config.server == client.DEFAULT_SERVER
    assert opts.model == labs.DEFAULT_MODEL
    assert opts.config.query_timeout == _config.DEFAULT_TIMEOUT
    assert (opts.tracer, opts.seed) == (None, None)
    assert _config.DEFAULT_MODEL is labs.DEFAULT_MODEL and _config.MODELS is labs.MODELS
    opts = _config.parse_options({"model": "sonar", "seed": 3, "jwt": "j", "timeout": 4}, with_model=True)
    assert (opts.model, opts.seed, opts.config.jwt, opts.config.query_timeout) == ("sonar", 3, "j", 4.0)
    client_, seed = opts.new_client()
    assert seed == 3 and client_.config is opts.config


def test_parse_options_refuses_what_is_not_an_option() -> None:
    with pytest.raises(LocalProtocolError, match="'colour'"):
        _config.parse_options({"colour": "red"}, with_model=True)
    with pytest.raises(LocalProtocolError, match="'model'"):
        _config.parse_options({"model": "sonar"}, with_model=False)  # connect takes no model
    with pytest.raises(LocalProtocolError, match="model as a str"):
        _config.parse_options({"model": 3}, with_model=True)
    with pytest.raises(LocalProtocolError, match="tracer"):
        _config.parse_options({"tracer": "file.txt"}, with_model=True)


def test_opened() -> None:
    assert _errors.opened(Connected(engine_sid="e", socket_sid="s", transport="websocket"))
    assert not _errors.opened(TextDelta(text="early"))
    with pytest.raises(RemoteProtocolError, match="the session ended: gone"):
        _errors.opened(Closed(reason="gone"))


# -- survivors of mutmut (issue 19, benchmarks/mutation-core.md) ----------------------------------------


def test_a_traced_client_without_a_seed_gets_one_and_its_tracer_sees_its_bytes() -> None:
    seen: list[tuple[float, int, str]] = []
    opts = _config.parse_options(
        {"server": "http://labs.test", "transport": "websocket",
         "tracer": lambda now, stream, direction, data: seen.append((now, stream, direction))},
        with_model=True,
    )
    client, seed = opts.new_client()
    assert seed is not None  # drawn, so that the trace can be replayed
    harness = Harness(client)  # type: ignore[arg-type]
    client.connect(0.0)
    harness.take(1)
    assert (0.0, 1, "out") in seen


def test_the_ask_service_has_its_own_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_config.TOKEN_VARIABLE, raising=False)
    monkeypatch.delenv(_config.COOKIES_FILE_VARIABLE, raising=False)
    assert _config.parse_options({"service": "perplexity"}, with_model=True).model == perplexity_request.DEFAULT_MODEL
    assert _config.parse_options({"service": "labs"}, with_model=True).model == _config.DEFAULT_MODEL
    assert _config.default_model("perplexity") == "turbo" and _config.default_model("labs") == "r1-1776"


COOKIES = "#HttpOnly_.perplexity.ai\tTRUE\t/\tTRUE\t0\t__Secure-next-auth.session-token\tfrom-the-file\n"


def test_a_token_or_cookies_given_outright_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    path = tmp_path / "cookies.txt"
    path.write_text(COOKIES)
    monkeypatch.setenv(_config.TOKEN_VARIABLE, " from-the-environment \n")
    monkeypatch.setenv(_config.COOKIES_FILE_VARIABLE, str(path))

    def signed_in(**given: Any) -> tuple[Any, Any]:
        config = _config.parse_options({"service": "perplexity", **given}, with_model=False).config
        return config.session_token, config.cookies_txt

    assert signed_in() == ("from-the-environment", COOKIES)
    assert signed_in(session_token="mine") == ("mine", None)
    assert signed_in(cookies_txt=COOKIES.replace("from-the-file", "given")) == (
        None, COOKIES.replace("from-the-file", "given"))


@pytest.mark.parametrize(("content", "error"), [(None, "FileNotFoundError"), (b"\xff\xfe", "UnicodeDecodeError")])
def test_an_unreadable_cookies_file_is_refused_by_name_and_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, content: bytes | None, error: str
) -> None:
    path = tmp_path / "cookies.txt"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.delenv(_config.TOKEN_VARIABLE, raising=False)
    monkeypatch.setenv(_config.COOKIES_FILE_VARIABLE, str(path))
    with pytest.raises(LocalProtocolError) as info:
        _config.parse_options({"service": "perplexity"}, with_model=False)
    assert str(info.value) == (
        f"expected {_config.COOKIES_FILE_VARIABLE} to name a readable cookies.txt file, got {str(path)!r} ({error})"
    )


def test_a_bad_option_is_refused_with_the_whole_list_and_a_bad_timeout_by_its_name() -> None:
    with pytest.raises(LocalProtocolError) as info:
        _config.parse_options({"colour": "red", "stream": True}, with_model=False)
    assert str(info.value) == (
        f"expected keyword arguments among {', '.join(sorted(_config.SessionOptions.__optional_keys__))}, "
        "got 'colour', 'stream'"
    )
    with pytest.raises(LocalProtocolError) as info:
        _config.parse_options({"timeout": 0}, with_model=False)
    assert str(info.value) == "expected timeout as a number of seconds > 0 or None, got 0"


def test_a_stream_error_without_a_host_a_message_or_an_errno_says_so_plainly() -> None:
    error = _errors.stream_error(ConnectionResetError(), action="receive from", host="", port=0, proxied=False)
    assert str(error) == "expected to receive from the server, but the connection failed (ConnectionResetError)"
    assert (error.errno, error.partial_text, error.partial_reasoning) == (None, "", "")
    error = _errors.stream_error(EOFError("closed"), action="send to", host="h.test", port=80, proxied=False)
    assert str(error) == "expected to send to the server at h.test:80, but the connection failed (EOFError: closed)"
    assert error.errno is None and isinstance(error.__cause__, EOFError)


def test_a_session_that_ends_keeps_what_came_of_the_answer_and_an_opening_has_none() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        _errors.check_event(Closed(reason="bye"), partial_text="abc", partial_reasoning="hmm")
    assert str(info.value) == "expected the answer to finish, but the session ended: bye"
    assert (info.value.partial_text, info.value.partial_reasoning) == ("abc", "hmm")
    with pytest.raises(RemoteProtocolError) as info:
        _errors.opened(Closed(reason="gone"))
    assert (info.value.partial_text, info.value.partial_reasoning) == ("", "")
