#!/usr/bin/env bash
# Mutation testing of one module (issue 19), with mutmut, in a scratch copy:
#   benchmarks/mutate.sh inflate          (or websocket, http, proxy, stack, tls, jsondepth, refusal,
#                                          browser, trace, headers, engineio, socketio, answer,
#                                          engineio_session, session, client, config, state,
#                                          errors, events, messages; pplx-sse, pplx-frames, pplx-patch, pplx-answer, ... for
#                                          plabs_proto/perplexity/; the programs: gateway, arguments,
#                                          serve, cli; the backends: backends-config, backends-errors,
#                                          driver, seam, async-api, asyncio, trio, sync, curl, emulator,
#                                          emulator-pplx)
# The copy (/tmp/plabs-mutate-MODULE) holds the worktree's tracked files as they are now, with backends/
# moved under plabs_proto/ (mutmut's mutants/ copy does not see the package-dir mapping, and
# tests/conftest.py imports the backends) and a [tool.mutmut] section naming the module and the test
# files that exercise it; the worktree itself gets no mutmut config and no mutants/.
# More arguments are mutant names (globs) for mutmut run: a sample, e.g. 'plabs_proto.*x_create_app*'.
# Needs mutmut in .venv (.venv/bin/pip install mutmut==3.8.1; not a project dependency).
# Afterwards: cd /tmp/plabs-mutate-MODULE && mutmut results  (mutmut show NAME shows a mutant's diff).
set -euo pipefail
cd "$(dirname "$0")/.."
module=${1:?usage: benchmarks/mutate.sh MODULE}
node=''  # set: the tests use the Node.js test server (tests/node_server, its node_modules included, is copied)
skip=''  # a -k expression of slow property tests to leave out (a surviving mutant reruns the whole selection)
case $module in
    inflate)   path=plabs_proto/wire/inflate.py
               tests='"tests/test_edges_wire.py", "tests/test_encoding.py"' ;;
    websocket) path=plabs_proto/wire/websocket.py
               tests='"tests/test_websocket.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py", "tests/test_encoding.py"' ;;
    http)      path=plabs_proto/wire/http.py
               tests='"tests/test_edges_wire.py", "tests/test_mutants_wire.py", "tests/test_encoding.py", "tests/test_client_limits.py"' ;;
    proxy)     path=plabs_proto/wire/proxy.py
               tests='"tests/test_proxy.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py", "tests/test_stack.py"' ;;
    stack)     path=plabs_proto/wire/stack.py
               tests='"tests/test_stack.py", "tests/test_mutants_wire.py", "tests/test_proxy.py"' ;;
    tls)       path=plabs_proto/wire/tls.py
               tests='"tests/test_tls.py", "tests/test_stack.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    jsondepth) path=plabs_proto/jsondepth.py
               tests='"tests/test_hostile_input.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    refusal)   path=plabs_proto/refusal.py
               tests='"tests/test_refusals.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    engineio)  path=plabs_proto/labs/engineio.py
               tests='"tests/test_engineio.py", "tests/test_socketio.py", "tests/test_engineio_session.py", "tests/test_session.py", "tests/test_hostile_input.py", "tests/test_core_mutants.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence' ;;
    socketio)  path=plabs_proto/labs/socketio.py
               tests='"tests/test_socketio.py", "tests/test_frame_reader.py", "tests/test_session.py", "tests/test_unnoticed.py", "tests/test_hostile_input.py", "tests/test_core_mutants.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence' ;;
    answer)    path=plabs_proto/labs/answer.py
               tests='"tests/test_labs.py", "tests/test_frame_reader.py", "tests/test_session.py", "tests/test_unnoticed.py", "tests/test_hostile_input.py", "tests/test_core_mutants.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence' ;;
    engineio_session) path=plabs_proto/labs/engineio_session.py
               tests='"tests/test_engineio_session.py", "tests/test_session.py", "tests/test_core_mutants.py", "tests/test_unnoticed.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence' ;;
    session)   path=plabs_proto/labs/session.py
               tests='"tests/test_session.py", "tests/test_engineio_session.py", "tests/test_core_mutants.py", "tests/test_unnoticed.py", "tests/test_refusals.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence or any_guarded_answer or retry_after_never' ;;
    client)    path=plabs_proto/wire/client.py
               tests='"tests/test_client.py", "tests/test_client_hostile.py", "tests/test_client_limits.py", "tests/test_client_lifecycle.py", "tests/test_client_fuzz.py", "tests/test_unnoticed.py", "tests/test_perplexity_client.py", "tests/test_encoding.py", "tests/test_mutants_core.py"'
               skip='tiny_packets_costs_little_memory or hostile_response_bytes or any_chunking or any_polling_body or reasonable_size or flood' ;;
    config)    path=plabs_proto/config.py
               tests='"tests/test_hostile_input.py", "tests/test_perplexity_session.py", "tests/test_perplexity_request.py", "tests/test_engineio_session.py", "tests/test_client.py", "tests/test_mutants_core.py"'
               skip='hostile_sse or hostile_catalog or any_ or arbitrary or memory' ;;  # not 'hostile': -k matches test_hostile_input.py too
    state)     path=plabs_proto/state.py
               tests='"tests/test_session.py", "tests/test_perplexity_session.py", "tests/test_core_mutants.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence' ;;
    errors)    path=plabs_proto/errors.py
               tests='"tests/test_refusals.py", "tests/test_backend_options.py", "tests/test_session.py", "tests/test_perplexity_session.py", "tests/test_perplexity_answer.py", "tests/test_labs.py", "tests/test_client.py", "tests/test_hostile_input.py", "tests/test_core_mutants.py", "tests/test_mutants_core.py", "tests/test_mutants_perplexity.py", "tests/test_mutants_wire.py"'
               skip='utf8_fast_path or any_input_sequence or hostile_sse or hostile_catalog or arbitrary or memory' ;;
    events)    path=plabs_proto/events.py
               tests='"tests/test_event_queue.py", "tests/test_backend_options.py", "tests/test_labs.py", "tests/test_session.py", "tests/test_client.py", "tests/test_mutants_core.py"'
               skip='utf8_fast_path or any_input_sequence or arbitrary' ;;
    messages)  path=plabs_proto/messages.py
               tests='"tests/test_engineio_session.py", "tests/test_encoding.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py", "tests/test_mutants_core.py", "tests/test_refusals.py"' ;;
    browser)   path=plabs_proto/wire/browser.py
               tests='"tests/test_browser.py", "tests/test_mutants_wire.py"' ;;
    trace)     path=plabs_proto/wire/trace.py
               tests='"tests/test_trace.py", "tests/test_trace_perplexity.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    headers)   path=plabs_proto/wire/headers.py
               tests='"tests/test_browser.py", "tests/test_hostile_input.py", "tests/test_client.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    # the Perplexity service (benchmarks/mutation-perplexity.md)
    pplx-sse)  path=plabs_proto/perplexity/sse.py  # test_perplexity_fast_paths: the whole events (its SSE tests)
               tests='"tests/test_sse.py", "tests/test_perplexity_fast_paths.py", "tests/test_mutants_perplexity.py"'
               skip='append_chunk_does or fast_paths_give or fast_update or follows_its_chunk_list' ;;
    pplx-frames) path=plabs_proto/perplexity/frames.py  # test_perplexity_answer: load_frame; _fast_paths: changed
               tests='"tests/test_perplexity_frames.py", "tests/test_perplexity_answer.py", "tests/test_perplexity_fast_paths.py", "tests/test_mutants_perplexity.py"'
               skip='1_mib or append_chunk_does or fast_paths_give or fast_update or short_path_of_blocks' ;;
    pplx-patch|pplx-answer|pplx-blocks|pplx-legacy|pplx-search|pplx-text|pplx-shape)
               path=plabs_proto/perplexity/${module#pplx-}.py
               tests='"tests/test_perplexity_answer.py", "tests/test_mutants_perplexity.py"' ;;
    pplx-request) path=plabs_proto/perplexity/request.py
               tests='"tests/test_perplexity_request.py", "tests/test_mutants_perplexity.py"' ;;
    pplx-session) path=plabs_proto/perplexity/session.py  # test_perplexity_catalog and _client: the in-process ones
               tests='"tests/test_perplexity_session.py", "tests/test_perplexity_request.py", "tests/test_mutants_perplexity.py", "tests/test_perplexity_catalog.py", "tests/test_perplexity_client.py", "-k", "not (emulator or on_asyncio or over_curl or models_live or usage_errors or ask_mode or every_backend or connection_mode)"' ;;
    # The backends' shared pieces (benchmarks/mutation-core.md): the options and the errors, with the
    # tests that run a backend in process (not the ones that start a `plabs` subprocess).
    backends-config) path=plabs_proto/backends/_config.py
               tests='"tests/test_backend_options.py", "tests/test_browser.py", "tests/test_perplexity_catalog.py", "tests/test_perplexity_e2e.py", "-k", "(not perplexity_e2e or session_token or cookies_txt) and not node"' ;;
    backends-errors) path=plabs_proto/backends/_errors.py
               tests='"tests/test_backend_options.py", "tests/test_driver.py", "tests/test_e2e_matrix.py", "tests/test_backend_curl.py", "-k", "(not (e2e_matrix or backend_curl) or connection_refused or unreachable_proxy or network_error or (backend_curl and dropped_mid_answer)) and not node"' ;;
    # The programs: only tests that run the module in process count (mutmut's mutants are not what a
    # `plabs` subprocess imports); -k leaves out the tests that start a gateway or a `plabs` subprocess, and
    # for the gateway those that serve it with uvicorn (which takes mutmut's trampoline of _App.__call__,
    # a plain function returning a coroutine, for an ASGI2 app and fails at startup).
    gateway)   path=plabs_proto/backends/programs/gateway.py
               tests='"tests/test_mutants_programs.py", "tests/test_gateway_hostile.py", "tests/test_gateway.py", "tests/test_gateway_perplexity.py", "-k", "not end_to_end and not retry_what and not serve_in_process and (hostile or mutants_programs or in_process or root_path or estimate_tokens or fold_history or config_from or models_served or thread_cache or thread_keys or from_the_environment or bad_settings)"' ;;
    arguments) path=plabs_proto/backends/programs/arguments.py
               tests='"tests/test_mutants_programs.py", "-k", "arguments"' ;;
    serve)     path=plabs_proto/backends/programs/serve.py
               tests='"tests/test_mutants_programs.py", "-k", "serve"' ;;
    cli)       path=plabs_proto/backends/programs/cli.py
               tests='"tests/test_mutants_programs.py", "tests/test_perplexity_cli.py", "tests/test_cli.py", "-k", "printer or plabs_in_process or perplexity_cli"' ;;
    # The backends (benchmarks/mutation-backends.md): the client runs in the test process (the servers are
    # threads of it, or Node.js), so a mutant is what the test runs; -k leaves out the slow concurrency tests.
    driver)    path=plabs_proto/backends/_driver.py
               tests='"tests/test_driver.py", "tests/test_mutants_backends.py"' ;;
    seam)      path=plabs_proto/backends/_seam.py
               tests='"tests/test_driver.py", "tests/test_backend_sync.py", "tests/test_mutants_backends.py"'
               node=yes ;;
    async-api) path=plabs_proto/backends/_async_api.py
               tests='"tests/test_mutants_backends.py", "tests/test_backend_sync.py", "tests/test_backend_async.py", "tests/test_perplexity_catalog.py", "tests/test_e2e_matrix.py::test_query_after_open_without_waiting", "tests/test_e2e_matrix.py::test_refused_connection_raises_from_the_first_query"'
               skip='hundred or concurrent_asks or models_live or (trio and not catalog)'
               node=yes ;;
    asyncio)   path=plabs_proto/backends/asyncio.py  # test_backend_asyncio: the network over real sockets
               tests='"tests/test_backend_asyncio.py", "tests/test_mutants_backends.py", "tests/test_backend_async.py"'
               skip='hundred or concurrent_asks or trio'
               node=yes ;;
    trio)      path=plabs_proto/backends/trio.py  # test_backend_trio: the network over real sockets
               tests='"tests/test_backend_trio.py", "tests/test_mutants_backends.py", "tests/test_backend_async.py"'
               skip='hundred or concurrent_asks or asyncio'
               node=yes ;;
    sync)      path=plabs_proto/backends/sync.py  # test_backend_sync: the network over real sockets too
               tests='"tests/test_backend_sync.py", "tests/test_mutants_backends.py", "tests/test_perplexity_catalog.py::test_a_connection_mode_and_a_query_mode"'
               node=yes ;;
    curl)      path=plabs_proto/backends/curl.py  # and the ask service over curl (_stream), the guards' refusals
               tests='"tests/test_mutants_backends.py", "tests/test_backend_curl.py", "tests/test_perplexity_e2e.py::test_curl_asks_and_follows_up", "tests/test_perplexity_e2e.py::test_curl_errors", "tests/test_perplexity_catalog.py::test_the_catalog_over_curl", "tests/test_e2e_guards.py::test_the_curl_backend_raises_the_same_errors", "tests/test_e2e_guards.py::test_the_curl_backend_names_a_refused_upgrade_by_its_status"'
               skip='fifty'
               node=yes ;;
    # The emulators run in the test process (EmulatorThread, or on the test's loop); not the Node.js flavour.
    emulator)  path=plabs_proto/backends/programs/emulator.py
               tests='"tests/test_mutants_backends.py", "tests/test_emulator.py", "tests/test_emulator_cookie.py", "tests/test_e2e_guards.py::test_each_guard_on_the_opening_get_and_on_the_upgrade", "tests/test_e2e_guards.py::test_a_guard_on_the_polling_requests_after_the_handshake"'
               skip='node or thread or private_hooks' ;;  # the guards' answers: seen through the client; private_hooks reads backends/ by path
    emulator-pplx) path=plabs_proto/backends/programs/emulator_perplexity.py
               tests='"tests/test_mutants_backends.py", "tests/test_perplexity_servers.py", "tests/test_perplexity_catalog.py::test_the_mode_reaches_the_emulator"'
               skip='node or cli' ;;
    *) echo "benchmarks/mutate.sh: unknown module $module" >&2; exit 2 ;;
esac
deselect=''
[ -z "$skip" ] || deselect=", \"-k\", \"not ($skip)\""
root=$PWD
venv=$root/.venv
scratch=/tmp/plabs-mutate-$module
rm -rf "$scratch"
mkdir -p "$scratch"
git ls-files -z | grep -zv '^tests/node_server/' | tar --null -T - -c | tar -x -C "$scratch"
cd "$scratch"
mv backends plabs_proto/backends
[ -z "$node" ] || ln -s "$root/tests/node_server" tests/node_server  # mutmut copies it into mutants/
cat >> pyproject.toml <<TOML

[tool.mutmut]
source_paths = ["plabs_proto"]
only_mutate = ["$path"]
pytest_add_cli_args_test_selection = [$tests]
pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"$deselect]
TOML
PATH=$venv/bin:$PATH nice -n 10 "$venv/bin/mutmut" run --max-children 1 "${@:2}"
PATH=$venv/bin:$PATH "$venv/bin/mutmut" results
