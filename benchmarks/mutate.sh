#!/usr/bin/env bash
# Mutation testing of one module (issue 19), with mutmut, in a scratch copy:
#   benchmarks/mutate.sh inflate          (or websocket, http, proxy, stack, tls, jsondepth, refusal,
#                                          browser, trace, headers, engineio_session, session, client,
#                                          config, state; pplx-sse, pplx-patch, pplx-answer, ... for
#                                          plabs_proto/perplexity/; the programs: gateway, arguments,
#                                          serve, cli)
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
    browser)   path=plabs_proto/wire/browser.py
               tests='"tests/test_browser.py", "tests/test_mutants_wire.py"' ;;
    trace)     path=plabs_proto/wire/trace.py
               tests='"tests/test_trace.py", "tests/test_trace_perplexity.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    headers)   path=plabs_proto/wire/headers.py
               tests='"tests/test_browser.py", "tests/test_hostile_input.py", "tests/test_client.py", "tests/test_edges_wire.py", "tests/test_mutants_wire.py"' ;;
    # the Perplexity service (benchmarks/mutation-perplexity.md)
    pplx-sse)  path=plabs_proto/perplexity/sse.py
               tests='"tests/test_sse.py", "tests/test_mutants_perplexity.py"' ;;
    pplx-patch|pplx-answer|pplx-blocks|pplx-legacy|pplx-search|pplx-text|pplx-shape)
               path=plabs_proto/perplexity/${module#pplx-}.py
               tests='"tests/test_perplexity_answer.py", "tests/test_mutants_perplexity.py"' ;;
    pplx-request) path=plabs_proto/perplexity/request.py
               tests='"tests/test_perplexity_request.py", "tests/test_mutants_perplexity.py"' ;;
    pplx-session) path=plabs_proto/perplexity/session.py  # test_perplexity_catalog and _client: the in-process ones
               tests='"tests/test_perplexity_session.py", "tests/test_perplexity_request.py", "tests/test_mutants_perplexity.py", "tests/test_perplexity_catalog.py", "tests/test_perplexity_client.py", "-k", "not (emulator or on_asyncio or over_curl or models_live or usage_errors or ask_mode or every_backend or connection_mode)"' ;;
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
    *) echo "benchmarks/mutate.sh: unknown module $module" >&2; exit 2 ;;
esac
deselect=''
[ -z "$skip" ] || deselect=", \"-k\", \"not ($skip)\""
venv=$PWD/.venv
scratch=/tmp/plabs-mutate-$module
rm -rf "$scratch"
mkdir -p "$scratch"
git ls-files -z | grep -zv '^tests/node_server/' | tar --null -T - -c | tar -x -C "$scratch"
cd "$scratch"
mv backends plabs_proto/backends
cat >> pyproject.toml <<TOML

[tool.mutmut]
source_paths = ["plabs_proto"]
only_mutate = ["$path"]
pytest_add_cli_args_test_selection = [$tests]
pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"$deselect]
TOML
PATH=$venv/bin:$PATH nice -n 10 "$venv/bin/mutmut" run --max-children 1 "${@:2}"
PATH=$venv/bin:$PATH "$venv/bin/mutmut" results
