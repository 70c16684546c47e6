#!/usr/bin/env node
// A test server of Perplexity's SSE ask endpoint (protocol.md §10), on plain Node `http`/`https`.
//
// Written from §10 and the public clients it cites, independently of the Python emulator, so
// that one reading of the format is checked against another.  Endpoints:
//   GET  /api/auth/session        sets __cf_bm and next-auth.csrf-token, answers {}
//   GET  /search/new              the other warm-up: the same cookies, an HTML page
//   GET  /rest/models/config/v2   a small model catalog
//   POST /rest/sse/perplexity_ask checks the JSON body, answers text/event-stream frames
//                                 "event: message" / "data: <json>", then "event: end_of_stream"
// A follow-up (params.last_backend_uuid naming an earlier answer) is checked against its thread
// (read_write_token, query_source "followup") and answered in it: same thread_url_slug, new
// backend_uuid.
//
// Prints exactly one line {"port": N} on stdout when it listens; nothing else goes to stdout.
// Exits on SIGTERM or SIGINT.
//
// Flags: --host H --port N --certfile PATH --keyfile PATH --config JSON --config-file PATH
// The JSON config (both may be given; the file first) takes these keys:
//   shape          "steps" | "blocks" (default) | "workflow"     the answer shape of §10.4
//   answer         the answer text (default: built from the query)
//   chunk_size     answer characters per streamed frame (default 8)
//   line_ending    "crlf" (default) | "lf"
//   extras         true: a "retry:" line, a comment before each frame, data over several lines
//   write_size     the body in writes (HTTP chunks) of this many bytes (1: one byte each)
//   frame_delay_ms a pause before each frame
//   early_final    true: a PENDING frame with final:true after half of the answer (the trap);
//                  the rest arrives only in the COMPLETED frame
//   fail           after fail_after frames, a status "failed" frame with this message and
//                  error_code (default FREE_TIER_RATE_LIMITED), then end_of_stream
//   rate_limit     "session" | "ask" | "all": 429 with Retry-After: retry_after (default "30";
//                  null: no header)
//   cloudflare     "session" | "ask" | "all": Cloudflare's 403 challenge page (HTML)
//   redirect       "session" | "ask" | "all": redirect_status (default 302) to redirect_to
//                  (default https://www.perplexity.ai/)
//   require_cookie true: an ask without the warm-up's __cf_bm cookie is answered 403
//   session_token  an ask without the cookie __Secure-next-auth.session-token of this value is
//                  answered 401 (signed in, the token missing or expired)
//   drop_after     the connection is cut after this many frames, with no end
//   gzip           true: the SSE body is gzip-encoded (flushed per frame) if the client accepts it
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const https = require("https");
const zlib = require("zlib");

const STEP_CHOICES = ["session", "ask", "all"];
const SOURCES = [
  { name: "Node source alpha", url: "https://example.com/node-perplexity/alpha", snippet: "Alpha." },
  { name: "Node source beta", url: "https://example.net/node-perplexity/beta", snippet: "Beta." },
];
const MODELS_CONFIG = {
  models: {
    turbo: { label: "Best", description: "Default", mode: "search", provider: null },
    pplx_pro: { label: "Pro", description: "Pro search", mode: "search", provider: null },
    gpt5: { label: "GPT-5", description: "OpenAI", mode: "search", provider: "openai" },
    pplx_reasoning: { label: "Reasoning", description: "Thinks first", mode: "search", provider: null },
  },
  config: [
    { label: "Best", description: "Default", subheading: null, has_new_tag: false, subscription_tier: "free",
      non_reasoning_model: "turbo", reasoning_model: null, text_only_model: false, is_default: true },
    { label: "GPT-5", description: "OpenAI", subheading: null, has_new_tag: false, subscription_tier: "pro",
      non_reasoning_model: "gpt5", reasoning_model: "pplx_reasoning", text_only_model: false },
  ],
  default_models: { search: "turbo" },
};
const CHALLENGE_PAGE =
  '<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title></head><body>' +
  '<div id="cf-please-wait">Checking your browser before accessing www.perplexity.ai.</div>' +
  "<noscript>Enable JavaScript and cookies to continue</noscript></body></html>\n";

function die(message) {
  process.stderr.write(`perplexity.js: ${message}\n`);
  process.exit(2);
}

// -- options ---------------------------------------------------------------------------------

function readOptions(argv) {
  const where = { host: "127.0.0.1", port: 0, certfile: null, keyfile: null };
  let config = {};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) die(`${flag} needs a value`);
    i++;
    if (flag === "--host") where.host = value;
    else if (flag === "--port") where.port = Number(value);
    else if (flag === "--certfile") where.certfile = value;
    else if (flag === "--keyfile") where.keyfile = value;
    else if (flag === "--config") config = { ...config, ...parseJson(value, flag) };
    else if (flag === "--config-file") config = { ...config, ...parseJson(fs.readFileSync(value, "utf8"), flag) };
    else die(`unknown flag ${flag}`);
  }
  return { where, settings: settle(config) };
}

function parseJson(text, flag) {
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== "object" || Array.isArray(value)) die(`${flag}: expected a JSON object`);
    return value;
  } catch (err) {
    die(`${flag}: expected JSON, got ${err.message}`);
  }
  return {};
}

function settle(raw) {
  const s = {
    shape: "blocks", answer: null, chunk_size: 8, line_ending: "crlf", extras: false, write_size: null,
    frame_delay_ms: 0, early_final: false, fail: null, error_code: "FREE_TIER_RATE_LIMITED", fail_after: 0,
    rate_limit: null, retry_after: "30", cloudflare: null, require_cookie: false, drop_after: null, gzip: false,
    redirect: null, redirect_to: "https://www.perplexity.ai/", redirect_status: 302, session_token: null,
  };
  for (const [key, value] of Object.entries(raw)) {
    if (!(key in s)) die(`unknown config key ${key}`);
    s[key] = value;
  }
  if (!["steps", "blocks", "workflow"].includes(s.shape)) die(`shape: expected steps, blocks or workflow, got ${s.shape}`);
  if (!["crlf", "lf"].includes(s.line_ending)) die(`line_ending: expected crlf or lf, got ${s.line_ending}`);
  if (!(Number.isInteger(s.chunk_size) && s.chunk_size >= 1)) die(`chunk_size: expected an integer >= 1, got ${s.chunk_size}`);
  if (s.write_size !== null && !(Number.isInteger(s.write_size) && s.write_size >= 1)) {
    die(`write_size: expected null or an integer >= 1, got ${s.write_size}`);
  }
  if (![301, 302, 303, 307, 308].includes(s.redirect_status)) die(`redirect_status: expected 301, 302, 303, 307 or 308, got ${s.redirect_status}`);
  for (const key of ["rate_limit", "cloudflare", "redirect"]) {
    if (s[key] !== null && !STEP_CHOICES.includes(s[key])) die(`${key}: expected one of ${STEP_CHOICES}, got ${s[key]}`);
  }
  return s;
}

// -- the answer, as a list of SSE data objects ------------------------------------------------

// By code points, not UTF-16 units: a piece never ends inside a surrogate pair.
function split(text, size) {
  const points = Array.from(text);
  const out = [];
  for (let at = 0; at < points.length; at += size) out.push(points.slice(at, at + size).join(""));
  return out;
}

class Answer {
  constructor(settings, ask) {
    this.s = settings;
    this.ask = ask;
    this.text = settings.answer !== null ? settings.answer : `Node's answer to "${ask.query}" [1]`;
    this.chunks = split(this.text, settings.chunk_size);
    this.cut = settings.early_final ? Math.floor(this.chunks.length / 2) : this.chunks.length;
  }

  frame(status, extra, { final = false, last = false } = {}) {
    const { ask } = this;
    return {
      status,
      final: final || last,
      final_sse_message: last,
      text_completed: last || (final && !this.s.early_final),
      backend_uuid: ask.backendUuid,
      uuid: ask.backendUuid,
      read_write_token: ask.thread.token,
      thread_url_slug: ask.thread.slug,
      context_uuid: ask.thread.context,
      frontend_uuid: ask.frontendUuid,
      display_model: ask.model,
      mode: ask.mode,
      query_str: ask.query,
      ...extra,
    };
  }

  failure() {
    const message = this.s.fail;
    return this.frame("failed", { text: message, error_message: message, error_code: this.s.error_code }, { last: true });
  }

  frames() {
    if (this.s.shape === "steps") return this.steps();
    if (this.s.shape === "blocks") return this.blocks();
    return this.workflow();
  }

  // Legacy: `text` is a JSON string holding the step list; FINAL's content.answer is JSON again.
  steps() {
    const { query } = this.ask;
    const before = [
      { uuid: crypto.randomUUID(), step_type: "INITIAL_QUERY", content: { query } },
      { uuid: crypto.randomUUID(), step_type: "SEARCH_WEB", content: { queries: [{ engine: "web", query }] } },
      { uuid: crypto.randomUUID(), step_type: "SEARCH_RESULTS", content: { web_results: SOURCES } },
    ];
    const withFinal = (n) => {
      const upto = this.chunks.slice(0, n);
      const inner = JSON.stringify({ answer: upto.join(""), chunks: upto, web_results: SOURCES, extra_web_results: [] });
      return JSON.stringify([...before, { uuid: "final", step_type: "FINAL", content: { answer: inner } }]);
    };
    const out = [this.frame("PENDING", { text: JSON.stringify(before) })];
    for (let n = 1; n <= this.cut; n++) out.push(this.frame("PENDING", { text: withFinal(n) }));
    out.push(this.frame("PENDING", { text: withFinal(this.cut) }, { final: true }));
    out.push(this.frame("COMPLETED", { text: withFinal(this.chunks.length) }, { last: true }));
    return out;
  }

  // Schematized: ask_text grows by incremental markdown blocks (chunk_starting_offset), its twin
  // track ask_text_0_markdown by diff_block patches; sources in a web_result_block.
  blocks() {
    const results = { intended_usage: "web_results", web_result_block: { progress: "DONE", web_results: SOURCES } };
    const plan = (progress) => ({
      intended_usage: "pro_search_steps",
      plan_block: {
        progress,
        goals: [{ description: "Searching the web" }],
        steps: [{ step_type: "SEARCH_WEB", search_web_content: { queries: [{ query: this.ask.query }] } }],
      },
    });
    const out = [this.frame("PENDING", { blocks: [plan("IN_PROGRESS")] }), this.frame("PENDING", { blocks: [results] })];
    for (let i = 0; i < this.cut; i++) {
      const patch = i === 0
        ? { op: "replace", path: "", value: { progress: "IN_PROGRESS", chunks: [this.chunks[0]] } }
        : { op: "add", path: `/chunks/${i}`, value: this.chunks[i] };
      out.push(this.frame("PENDING", {
        blocks: [
          { intended_usage: "ask_text", markdown_block: { progress: "IN_PROGRESS", chunks: [this.chunks[i]], chunk_starting_offset: i } },
          { intended_usage: "ask_text_0_markdown", diff_block: { field: "markdown_block", patches: [patch] } },
        ],
      }));
    }
    out.push(this.frame("PENDING", { blocks: [plan("DONE")] }, { final: true }));
    const whole = (usage) => ({
      intended_usage: usage,
      markdown_block: { progress: "DONE", chunks: this.chunks, chunk_starting_offset: 0, answer: this.text },
    });
    out.push(this.frame("COMPLETED", { blocks: [plan("DONE"), results, whole("ask_text"), whole("ask_text_0_markdown")] }, { last: true }));
    return out;
  }

  // 2026: one workflow_block, then RFC 6902 patches against it; the COMPLETED frame replaces it whole.
  workflow() {
    const base = "/steps/1/items/0/payload/text_payload";
    const text = (variant, chunks, streaming) => ({
      type: "WORKFLOW_ITEM_TEXT",
      payload: { text_payload: { text: chunks.join(""), chunks, variant, is_streaming: streaming } },
    });
    const searchStep = {
      items: [
        { type: "WORKFLOW_ITEM_QUERIES", payload: { queries_payload: { queries: [{ query: this.ask.query }] } } },
        { type: "WORKFLOW_ITEM_SOURCES", payload: { sources_payload: { sources: SOURCES } } },
      ],
    };
    const diff = (patches) => ({ blocks: [{ intended_usage: "workflow_root", diff_block: { field: "workflow_block", patches } }] });
    const out = [
      this.frame("PENDING", { blocks: [{ intended_usage: "workflow_root", workflow_block: { status: "WORKFLOW_EXECUTING_STEPS", steps: [searchStep] } }] }),
      this.frame("PENDING", diff([
        { op: "add", path: "/steps/1", value: { items: [text("answer", [], true)] } },
        { op: "add", path: "/steps/0/items/2", value: text("thinking", ["Reading the sources."], false) },
      ])),
    ];
    for (let i = 0; i < this.cut; i++) {
      out.push(this.frame("PENDING", diff([
        { op: "replace", path: `${base}/text`, value: this.chunks.slice(0, i + 1).join("") },
        { op: "add", path: `${base}/chunks/${i}`, value: this.chunks[i] },
      ])));
    }
    out.push(this.frame("PENDING", diff([{ op: "replace", path: "/status", value: "WORKFLOW_FINALIZING" }]), { final: true }));
    const done = {
      status: "WORKFLOW_COMPLETED",
      steps: [
        { items: [...searchStep.items, text("thinking", ["Reading the sources."], false)] },
        { items: [text("answer", this.chunks, false)] },
      ],
    };
    out.push(this.frame("COMPLETED", diff([{ op: "replace", path: "", value: done }]), { last: true }));
    return out;
  }
}

// -- HTTP ------------------------------------------------------------------------------------

const threads = new Map(); // backend_uuid of any answer -> its thread
const issued = new Set(); // __cf_bm values handed out

function cookies(req) {
  const jar = {};
  for (const part of (req.headers.cookie || "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0) jar[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return jar;
}

function json(res, status, body, headers = {}) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": data.length, ...headers });
  res.end(data);
}

function guard(settings, step, res) {
  if (settings.redirect === step || settings.redirect === "all") {
    res.writeHead(settings.redirect_status, { Location: settings.redirect_to, "Content-Length": 0 });
    res.end();
    return true;
  }
  if (settings.rate_limit === step || settings.rate_limit === "all") {
    const headers = settings.retry_after === null ? {} : { "Retry-After": String(settings.retry_after) };
    json(res, 429, { detail: "rate limited: too many requests" }, headers);
    return true;
  }
  if (settings.cloudflare === step || settings.cloudflare === "all") {
    const page = Buffer.from(CHALLENGE_PAGE);
    res.writeHead(403, {
      "Content-Type": "text/html; charset=UTF-8", "Content-Length": page.length, Server: "cloudflare",
      "cf-mitigated": "challenge", "CF-RAY": "90a0b0c0d0e0f001-FRA",
    });
    res.end(page);
    return true;
  }
  return false;
}

function warmUp(settings, req, res, path) {
  if (guard(settings, "session", res)) return;
  const bm = crypto.randomBytes(24).toString("base64url");
  issued.add(bm);
  const setCookie = [
    `__cf_bm=${bm}; Path=/; Max-Age=1800; HttpOnly`,
    `next-auth.csrf-token=${crypto.randomBytes(32).toString("hex")}%7C${crypto.randomBytes(32).toString("hex")}; Path=/; HttpOnly; SameSite=Lax`,
  ];
  if (path === "/search/new") {
    const page = Buffer.from("<!DOCTYPE html><html><body>Perplexity</body></html>\n");
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Content-Length": page.length, "Set-Cookie": setCookie });
    res.end(page);
    return;
  }
  json(res, 200, {}, { "Set-Cookie": setCookie });
}

function refuse(status, detail) {
  const err = new Error(detail);
  err.status = status;
  return err;
}

function checkAsk(req, body) {
  const type = (req.headers["content-type"] || "").split(";")[0].trim().toLowerCase();
  if (type !== "application/json") throw refuse(415, `expected Content-Type application/json, got ${JSON.stringify(req.headers["content-type"] || "")}`);
  let parsed;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch (err) {
    throw refuse(400, `expected a JSON body, got ${err.message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw refuse(400, "expected a JSON object body");
  const { query_str: query, params } = parsed;
  if (typeof query !== "string" || query.length === 0) throw refuse(400, `expected query_str, a non-empty string, got ${JSON.stringify(query)}`);
  if (params === null || typeof params !== "object" || Array.isArray(params)) throw refuse(400, `expected params, an object, got ${JSON.stringify(params)}`);
  if (typeof params.version !== "string") throw refuse(400, `expected params.version, a string like "2.18", got ${JSON.stringify(params.version)}`);
  for (const key of ["mode", "model_preference"]) {
    if (params[key] !== undefined && typeof params[key] !== "string") throw refuse(400, `expected params.${key}, a string, got ${JSON.stringify(params[key])}`);
  }
  let thread;
  const last = params.last_backend_uuid;
  if (last === undefined || last === null) {
    if (params.query_source === "followup") throw refuse(400, 'expected last_backend_uuid with query_source "followup", got none');
    const words = query.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 50) || "thread";
    thread = { slug: `${words}-${crypto.randomBytes(8).toString("hex")}`, token: crypto.randomUUID(), context: crypto.randomUUID() };
  } else {
    thread = threads.get(last);
    if (thread === undefined) throw refuse(400, `expected last_backend_uuid of an earlier answer, got ${JSON.stringify(last)}`);
    const token = params.read_write_token;
    if (token !== undefined && token !== null && token !== thread.token) throw refuse(403, `expected the thread's read_write_token, got ${JSON.stringify(token)}`);
    if (params.query_source !== undefined && params.query_source !== "followup") {
      throw refuse(400, `expected query_source "followup" on a follow-up, got ${JSON.stringify(params.query_source)}`);
    }
  }
  const backendUuid = crypto.randomUUID();
  threads.set(backendUuid, thread);
  return {
    query, thread, backendUuid,
    model: params.model_preference || "turbo",
    mode: params.mode || "concise",
    frontendUuid: typeof params.frontend_uuid === "string" ? params.frontend_uuid : null,
  };
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function streamAnswer(settings, req, res, ask) {
  const eol = settings.line_ending === "crlf" ? "\r\n" : "\n";
  const zipped = settings.gzip && /\bgzip\b/i.test(req.headers["accept-encoding"] || "");
  const headers = { "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache" };
  if (zipped) headers["Content-Encoding"] = "gzip";
  res.writeHead(200, headers);
  res.flushHeaders();

  let gz = null;
  let pending = [];
  if (zipped) {
    gz = zlib.createGzip();
    gz.on("data", (piece) => pending.push(piece));
  }
  const encode = (text) => new Promise((resolve) => {
    if (gz === null) return resolve(Buffer.from(text, "utf8"));
    gz.write(text, "utf8");
    gz.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      const out = Buffer.concat(pending);
      pending = [];
      resolve(out);
    });
  });
  const put = (bytes) => new Promise((resolve) => {
    if (res.destroyed) return resolve();
    res.write(bytes, () => resolve());
  });
  const send = async (text) => {
    const bytes = await encode(text);
    const size = settings.write_size || bytes.length || 1;
    for (let at = 0; at < bytes.length; at += size) await put(bytes.subarray(at, at + size));
  };
  const message = (name, data) => {
    if (!settings.extras) return `event: ${name}${eol}data: ${JSON.stringify(data)}${eol}${eol}`;
    const lines = JSON.stringify(data, null, 2).split("\n").map((line) => `data:${line}${eol}`).join("");
    return `: ping${eol}event: ${name}${eol}${lines}${eol}`;
  };

  if (settings.extras) await send(`retry: 2500${eol}${eol}`);
  const answer = new Answer(settings, ask);
  const frames = answer.frames();
  for (let n = 0; n < frames.length; n++) {
    if (res.destroyed) return;
    if (settings.drop_after !== null && n >= settings.drop_after) {
      res.socket.destroy();
      return;
    }
    if (settings.fail !== null && n >= settings.fail_after) {
      await send(message("message", answer.failure()));
      break;
    }
    if (settings.frame_delay_ms > 0) await pause(settings.frame_delay_ms);
    await send(message("message", frames[n]));
  }
  await send(`event: end_of_stream${eol}data: {}${eol}${eol}`);
  if (gz !== null) {
    const tail = await new Promise((resolve) => {
      gz.on("end", () => resolve(Buffer.concat(pending)));
      gz.end();
    });
    if (tail.length > 0) await put(tail);
  }
  res.end();
}

function handler(settings) {
  return (req, res) => {
    const path = req.url.split("?")[0];
    if (req.method === "GET" && (path === "/api/auth/session" || path === "/search/new")) return warmUp(settings, req, res, path);
    if (req.method === "GET" && path === "/rest/models/config/v2") return json(res, 200, MODELS_CONFIG);
    if (path !== "/rest/sse/perplexity_ask") return json(res, 404, { detail: `no route ${req.method} ${path}` });
    if (req.method !== "POST") return json(res, 405, { detail: `expected POST, got ${req.method}` }, { Allow: "POST" });
    const parts = [];
    req.on("data", (piece) => parts.push(piece));
    req.on("end", () => {
      if (guard(settings, "ask", res)) return;
      if (settings.require_cookie) {
        const got = cookies(req).__cf_bm;
        if (!issued.has(got)) {
          return json(res, 403, { detail: `expected the cookie __cf_bm from GET /api/auth/session, got ${got === undefined ? "none" : JSON.stringify(got)}` });
        }
      }
      if (settings.session_token !== null) {
        const got = cookies(req)["__Secure-next-auth.session-token"];
        if (got !== settings.session_token) {
          return json(res, 401, { detail: `expected a valid __Secure-next-auth.session-token cookie, got ${got === undefined ? "none" : "a wrong one"}: the session token is missing or expired` });
        }
      }
      let ask;
      try {
        ask = checkAsk(req, Buffer.concat(parts));
      } catch (err) {
        return json(res, err.status || 400, { detail: err.message });
      }
      streamAnswer(settings, req, res, ask).catch((err) => {
        process.stderr.write(`perplexity.js: ${err.stack}\n`);
        res.destroy();
      });
    });
  };
}

function main() {
  const { where, settings } = readOptions(process.argv.slice(2));
  const serve = handler(settings);
  const server = where.certfile
    ? https.createServer({ cert: fs.readFileSync(where.certfile), key: fs.readFileSync(where.keyfile || where.certfile) }, serve)
    : http.createServer(serve);
  server.keepAliveTimeout = 5000;
  server.on("error", (err) => die(`cannot listen: ${err.message}`));
  server.listen(where.port, where.host, () => {
    process.stdout.write(`{"port": ${server.address().port}}\n`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
