#!/usr/bin/env node
// A Perplexity Labs test server on the official Node.js socket.io package (the "Node flavour").
//
// Same frames and checks as plabs_proto.backends.emulator, but served by socket.io 4.8.4 /
// engine.io 6.x, which answers the polling POST with "ok" (lower case) and sends no NOOP ("6")
// on the WebSocket after the upgrade.  Prints exactly one line {"port": N} on stdout when it
// listens; logs nothing else to stdout.  Exits promptly on SIGTERM or SIGINT.
//
// Flags: --host H --port N --answer TEXT --answer-file PATH --reasoning TEXT --no-reasoning
//        --final-output TEXT --chunk-size N --frame-delay-ms N
//        --ping-interval-ms N --ping-timeout-ms N --max-payload N --fail TEXT --fail-after N
//        --drop-after N --silent --citations JSON --jwt TEXT --no-check-origin
//        --certfile PATH --keyfile PATH --per-message-deflate
// --answer-file reads the answer from a UTF-8 file at startup (a command-line argument holds
// at most 128 KiB on Linux, too little for a long answer).
// --per-message-deflate turns on engine.io's perMessageDeflate (off by default): the `ws` package
// then accepts a client's permessage-deflate offer and compresses messages of 1 KiB and more.
// Polling bodies of 1 KiB and more are gzipped whenever the client accepts it (httpCompression,
// on by default).
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const { Server } = require("socket.io");

const ALLOWED_ORIGIN = "https://labs.perplexity.ai";
const QUERY_EVENT = "perplexity_labs";
const REASONING_MODELS = new Set(["r1-1776", "sonar-reasoning", "sonar-reasoning-pro"]);
const NO_OPENING_THINK = "r1-1776";
const SONAR_CITATIONS = [
  "https://example.com/labs-emulator/source-1",
  "https://example.org/labs-emulator/source-2",
];
const ROLES = ["user", "assistant", "system"];

function fatal(message) {
  process.stderr.write(`server.js: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    host: "127.0.0.1",
    port: 0,
    answer: null,
    answerFile: null,
    reasoning: null,
    noReasoning: false,
    finalOutput: null,
    chunkSize: 8,
    frameDelayMs: 10,
    pingIntervalMs: 25000,
    pingTimeoutMs: 20000,
    maxPayload: 1000000,
    fail: null,
    failAfter: 0,
    dropAfter: null,
    silent: false,
    citations: null,
    jwt: "anonymous-ask-user",
    checkOrigin: true,
    certfile: null,
    keyfile: null,
    perMessageDeflate: false,
  };
  const ints = {
    "--port": "port",
    "--chunk-size": "chunkSize",
    "--frame-delay-ms": "frameDelayMs",
    "--ping-interval-ms": "pingIntervalMs",
    "--ping-timeout-ms": "pingTimeoutMs",
    "--max-payload": "maxPayload",
    "--fail-after": "failAfter",
    "--drop-after": "dropAfter",
  };
  const strings = {
    "--host": "host",
    "--answer": "answer",
    "--answer-file": "answerFile",
    "--reasoning": "reasoning",
    "--final-output": "finalOutput",
    "--fail": "fail",
    "--jwt": "jwt",
    "--certfile": "certfile",
    "--keyfile": "keyfile",
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--silent") {
      opts.silent = true;
    } else if (flag === "--no-reasoning") {
      opts.noReasoning = true;
    } else if (flag === "--no-check-origin") {
      opts.checkOrigin = false;
    } else if (flag === "--per-message-deflate") {
      opts.perMessageDeflate = true;
    } else if (flag in ints || flag in strings || flag === "--citations") {
      if (i + 1 >= argv.length) fatal(`${flag} needs a value`);
      const value = argv[++i];
      if (flag in ints) {
        if (!/^\d+$/.test(value)) fatal(`${flag} expects a non-negative integer, got ${JSON.stringify(value)}`);
        opts[ints[flag]] = Number(value);
      } else if (flag in strings) {
        opts[strings[flag]] = value;
      } else {
        try {
          opts.citations = JSON.parse(value);
        } catch (err) {
          fatal(`--citations expects a JSON array, got ${JSON.stringify(value.slice(0, 60))}`);
        }
        if (!Array.isArray(opts.citations)) fatal("--citations expects a JSON array");
      }
    } else {
      fatal(`unknown flag ${JSON.stringify(flag)}`);
    }
  }
  if (opts.chunkSize < 1) fatal("--chunk-size must be at least 1");
  if (opts.pingIntervalMs < 1 || opts.pingTimeoutMs < 1) fatal("ping interval and timeout must be > 0");
  if (opts.keyfile && !opts.certfile) fatal("--keyfile given without --certfile");
  if (opts.answerFile !== null) {
    if (opts.answer !== null) fatal("--answer and --answer-file given together");
    try {
      opts.answer = fs.readFileSync(opts.answerFile, "utf8");
    } catch (err) {
      fatal(`cannot read --answer-file: ${err.message}`);
    }
  }
  return opts;
}

// -- answer text (mirrors backends/programs/emulator.py; code points, never UTF-16 halves) -------------

function codePoints(text) {
  return Array.from(text);
}

function excerpt(text, limit) {
  const flat = text.split(/\s+/).filter((part) => part.length > 0).join(" ");
  const points = codePoints(flat);
  return points.length <= limit ? flat : points.slice(0, limit).join("") + "...";
}

function defaultAnswer(model, prompt) {
  return (
    `This is the plabs-proto Labs emulator answering as ${model}. ` +
    `You asked: \u201c${excerpt(prompt, 200)}\u201d. ` +
    "A real Perplexity Labs model would answer here; this text is fixed so tests can check it. " +
    "It arrives in small cumulative chunks, like the real service."
  );
}

function defaultReasoning(model, prompt) {
  return (
    `The user asked: \u201c${excerpt(prompt, 80)}\u201d. ` +
    `I am ${model} in the emulator, so I will answer briefly and plainly.`
  );
}

function buildOutput(model, answer, reasoning) {
  if (!REASONING_MODELS.has(model)) return answer;
  const opening = model === NO_OPENING_THINK ? "" : "<think>";
  return `${opening}${reasoning}</think>\n\n${answer}`;
}

function lastPrompt(messages) {
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i].role === "user") return messages[i].content;
  }
  return messages[messages.length - 1].content;
}

function short(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.slice(0, 60);
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// Returns {model, messages} or the text of the failure frame.
function validateRequest(args) {
  if (args.length !== 1) return `Invalid request: expected one request object, got ${args.length} arguments`;
  const request = args[0];
  if (!isObject(request)) return `Invalid request: expected a JSON object, got ${short(request)}`;
  for (const key of ["version", "source", "model", "messages"]) {
    if (!(key in request)) return `Invalid request: missing field '${key}'`;
  }
  for (const key of ["version", "source", "model"]) {
    if (typeof request[key] !== "string" || request[key].length === 0) {
      return `Invalid request: '${key}' must be a non-empty string, got ${short(request[key])}`;
    }
  }
  const messages = request.messages;
  if (!Array.isArray(messages) || messages.length === 0) {
    return `Invalid request: 'messages' must be a non-empty list, got ${short(messages)}`;
  }
  for (let i = 0; i < messages.length; i++) {
    const message = messages[i];
    if (!isObject(message)) return `Invalid request: messages[${i}] must be an object, got ${short(message)}`;
    if (!ROLES.includes(message.role)) {
      return `Invalid request: messages[${i}].role must be one of ${JSON.stringify(ROLES)}, got ${short(message.role)}`;
    }
    if (typeof message.content !== "string") {
      return `Invalid request: messages[${i}].content must be a string, got ${short(message.content)}`;
    }
  }
  return { model: request.model, messages };
}

function modelOf(args) {
  if (args.length > 0 && isObject(args[0]) && typeof args[0].model === "string" && args[0].model) {
    return args[0].model;
  }
  return "unknown";
}

// -- server ------------------------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2));

const httpServer = opts.certfile
  ? https.createServer({
      cert: fs.readFileSync(opts.certfile),
      key: fs.readFileSync(opts.keyfile || opts.certfile),
    })
  : http.createServer();

const io = new Server(httpServer, {
  path: "/socket.io/",
  serveClient: false,
  pingInterval: opts.pingIntervalMs,
  pingTimeout: opts.pingTimeoutMs,
  maxHttpBufferSize: opts.maxPayload,
  perMessageDeflate: opts.perMessageDeflate,
  allowRequest: (req, callback) => {
    const origin = req.headers.origin;
    if (opts.checkOrigin && origin && origin !== ALLOWED_ORIGIN) {
      callback(`${origin} is not an accepted origin.`, false);
    } else {
      callback(null, true);
    }
  },
});

// Engine.IO sid -> net.Socket objects that carried requests of that session.
const netSockets = new Map();
const dropped = new Set();

function remember(sid, netSocket) {
  if (!netSocket) return;
  let set = netSockets.get(sid);
  if (!set) {
    set = new Set();
    netSockets.set(sid, set);
  }
  set.add(netSocket);
}

function sidOf(req) {
  try {
    return new URL(req.url, "http://localhost").searchParams.get("sid");
  } catch (err) {
    return null;
  }
}

io.engine.use((req, res, next) => {
  const sid = sidOf(req);
  if (sid) {
    if (dropped.has(sid)) {
      req.socket.destroy();
      return;
    }
    remember(sid, req.socket);
  }
  next();
});

io.engine.on("connection", (engineSocket) => {
  remember(engineSocket.id, engineSocket.request && engineSocket.request.socket);
  engineSocket.on("close", () => netSockets.delete(engineSocket.id));
});

io.use((socket, next) => {
  const auth = socket.handshake.auth;
  if (isObject(auth) && auth.jwt === opts.jwt) {
    next();
  } else {
    next(new Error(`not authorized: expected auth {'jwt': '${opts.jwt}'}, got ${short(auth)}`));
  }
});

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Wait until what was emitted has left the process (so "drop after N frames" means N arrived).
async function flush(socket) {
  const conn = socket.conn;
  const deadline = Date.now() + 1000;
  while (Date.now() < deadline && conn.writeBuffer && conn.writeBuffer.length > 0) {
    await sleep(5);
  }
  await sleep(20);
}

async function drop(socket) {
  const conn = socket.conn;
  await flush(socket);
  dropped.add(conn.id);
  for (const netSocket of netSockets.get(conn.id) || []) {
    netSocket.destroy();
  }
  netSockets.delete(conn.id);
}

async function answer(socket, args) {
  if (opts.silent) return;
  const started = process.hrtime.bigint();
  const elapsed = () => Math.round(Number(process.hrtime.bigint() - started) / 1e6) / 1000;
  const checked = validateRequest(args);
  if (typeof checked === "string") {
    socket.emit(`${modelOf(args)}_query_progress`, { status: "failed", text: checked });
    return;
  }
  const { model, messages } = checked;
  const event = `${model}_query_progress`;
  const prompt = lastPrompt(messages);
  const text = opts.answer !== null ? opts.answer : defaultAnswer(model, prompt);
  const reasoning = opts.reasoning !== null ? opts.reasoning : defaultReasoning(model, prompt);
  const full = codePoints(opts.noReasoning ? text : buildOutput(model, text, reasoning));
  const citations = opts.citations !== null ? opts.citations : model.startsWith("sonar") ? SONAR_CITATIONS : [];
  const count = Math.ceil(full.length / opts.chunkSize);
  for (let sent = 0; sent <= count; sent++) {
    if (!socket.connected) return;
    if (opts.dropAfter !== null && sent === opts.dropAfter) {
      await drop(socket);
      return;
    }
    if (opts.fail !== null && sent === opts.failAfter) {
      socket.emit(event, { status: "failed", text: opts.fail });
      return;
    }
    if (sent === count) break;
    if (sent > 0 && opts.frameDelayMs > 0) await sleep(opts.frameDelayMs);
    socket.emit(event, {
      output: full.slice(0, (sent + 1) * opts.chunkSize).join(""),
      final: false,
      elapsed_time: elapsed(),
      tokens_streamed: sent + 1,
    });
  }
  if (count > 0 && opts.frameDelayMs > 0) await sleep(opts.frameDelayMs);
  if (!socket.connected) return;
  socket.emit(event, {
    output: opts.finalOutput !== null ? opts.finalOutput : full.join(""),
    final: true,
    status: "completed",
    citations,
    elapsed_time: elapsed(),
    tokens_streamed: count,
  });
}

io.on("connection", (socket) => {
  // Queries on one connection run one after another.
  let chain = Promise.resolve();
  socket.on(QUERY_EVENT, (...args) => {
    chain = chain.then(() => answer(socket, args)).catch((err) => {
      process.stderr.write(`server.js: query failed: ${err && err.stack ? err.stack : err}\n`);
    });
  });
});

function shutdown() {
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

httpServer.on("error", (err) => fatal(`cannot listen: ${err.message}`));
httpServer.listen(opts.port, opts.host, () => {
  process.stdout.write(`{"port": ${httpServer.address().port}}\n`);
});
