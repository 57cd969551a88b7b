'use strict';
/**
 * Scenario runner: drives the real @iotize/tap SDK against a Tap (the emulator, or a test fake) so that
 * pytest can check what a real client sends and understands.
 *
 * Input, one JSON document on stdin:
 *   {"transport": "tcp" | "ws" | "mqtt", "host": "127.0.0.1", "port": 2000,
 *    "path": "/",               (ws only, optional)
 *    "serialNumber": "...",     (mqtt only: the Tap's serial; host:port is the broker's)
 *    "netkey": "...",           (mqtt only, optional; the package's default "testnetkey")
 *    "brokerUsername", "brokerPassword" (mqtt only, optional)
 *    "sendTimeoutMs": 3000,     (optional; the SDK default is 500)
 *    "connectTimeoutMs": 3000,  (optional; the SDK default is 1000)
 *    "tcpIdleMs": 50,           (tcp only, optional: quiet time that ends an answer lacking 90 00)
 *    "watchdogMs": 60000,       (optional; `--watchdog-ms N` on the command line wins)
 *    "autoConnect": true,       (optional; false leaves connecting to a {"call": "connect"} step)
 *    "steps": [...]}
 *
 * Steps:
 *   {"call": "group.getName", "args": [56]}     tap.service.group.getName(56) (any loaded service)
 *   {"call": "auth.login", "args": [{...}]}     tap.auth / tap.encryption / any other tap.<name> path
 *   {"call": "tap.isConnected"}                 explicit root ("service.<svc>.<fn>" is accepted too)
 *   {"call": "data.bundle", "args": ["sensors"], "then": {"call": "read", "args": []}}
 *                                               calls a method of what the call returned (tap.data)
 *   {"call": "repeat", "times": N, "step": {...}}
 *   {"call": "sleep", "ms": N}
 *   {"call": "connect"} / {"call": "disconnect"}
 *   {"call": "configure", "config": {meta, config}, "options": {...}}
 *       tap.configurator.setup(config, options), then every step operation run to its end (the SDK's
 *       configurator: factory reset, encryption, one call per setting, logout); the result's body is
 *       {"calls": [paths executed, in order]}, its error the one that stopped it (with "lastCall").
 *   {"call": "multi", "calls": [{"service": "group", "fn": "getNameCall", "args": [0]}, ...]}
 *       tap.service.interface.executeMultipleCalls([...]); body: [{status, body}] per sub-call.
 * Any {"hex": "..."} inside args becomes a Uint8Array.
 *
 * Output, one JSON document on stdout: {"results": [...]}, one result per step:
 *   {"call", "ok", "status" (Tap status byte, or null), "body" (JSON-able; bytes as {"hex"}), "error"}
 * A repeat step gives {"call": "repeat", "ok", "times", "count" (ok results), "firstFailure" (result with
 * its "index"), "status": null, "body": null, "error": null}.
 *
 * Exit codes: 0 once every step ran (failed steps are data, not errors); 2 bad input or the automatic
 * connect failed; 3 the watchdog fired; 4 an unexpected crash. On 3 and 4 the results so far are still
 * printed, with "fatal" saying what happened. Diagnostics go to stderr.
 */
const { Tap } = require('@iotize/tap');
require('@iotize/tap/service/all'); // group, interface, device, scram...: the scram service is NOT
require('@iotize/tap/auth'); //         loaded by @iotize/tap/auth, and SCRAM login needs it.
require('@iotize/tap/ext/data'); //     tap.data: variables and bundles decoded by the SDK's converters
const { TcpProtocol } = require('./tcp-protocol');

const EXIT_BAD_INPUT = 2;
const EXIT_WATCHDOG = 3;
const EXIT_CRASH = 4;
const DEFAULT_WATCHDOG_MS = 60000;
const MAX_JSON_DEPTH = 16;

const results = [];
let finished = false;

function finish(exitCode, extra) {
  if (finished) return;
  finished = true;
  const text = JSON.stringify({ results, ...extra }) + '\n';
  process.stdout.write(text, () => process.exit(exitCode));
}

function log(...parts) {
  process.stderr.write(`[sdk-driver] ${parts.join(' ')}\n`);
}

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (chunk) => chunks.push(chunk));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function watchdogFromArgv(argv) {
  const at = argv.indexOf('--watchdog-ms');
  if (at < 0) return undefined;
  const value = Number(argv[at + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new Error('--watchdog-ms needs a positive number');
  return value;
}

function hexToBytes(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error(`invalid hex string: ${JSON.stringify(hex)}`);
  }
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

/** JSON args to SDK args: {"hex": ".."} objects become Uint8Array, recursively. */
function decodeArg(value) {
  if (Array.isArray(value)) return value.map(decodeArg);
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === 'hex') return hexToBytes(value.hex);
    const out = {};
    for (const key of keys) out[key] = decodeArg(value[key]);
    return out;
  }
  return value;
}

/** SDK values to JSON: bytes become {"hex": ".."}; functions and cycles are dropped. */
function toJson(value, depth = 0, seen = new Set()) {
  if (value === undefined || value === null) return null;
  if (value instanceof Uint8Array) return { hex: Buffer.from(value).toString('hex') };
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'function' || typeof value === 'symbol') return null;
  if (value instanceof Date) return value.toISOString();
  if (depth >= MAX_JSON_DEPTH || seen.has(value)) return null;
  seen.add(value);
  let out;
  if (Array.isArray(value)) {
    out = value.map((item) => toJson(item, depth + 1, seen));
  } else {
    out = {};
    for (const key of Object.keys(value)) {
      if (typeof value[key] !== 'function') out[key] = toJson(value[key], depth + 1, seen);
    }
  }
  seen.delete(value);
  return out;
}

function isTapResponse(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof value.status === 'number' &&
    typeof value.body === 'function' &&
    typeof value.isSuccessful === 'function'
  );
}

/** The Tap status carried by an error, looking through wrapped causes (auth errors wrap responses). */
function statusOfError(err) {
  for (let cause = err, hops = 0; cause && hops < 8; cause = cause.cause, hops += 1) {
    if (cause.response && typeof cause.response.status === 'number') return cause.response.status;
  }
  return null;
}

function describeError(err) {
  if (!(err instanceof Error)) return { name: typeof err, code: null, message: String(err) };
  const name = err.constructor && err.constructor.name !== 'Error' ? err.constructor.name : err.name;
  const code = err.code === undefined ? null : String(err.code);
  return { name, code, message: err.message };
}

function failure(call, err) {
  return { call, ok: false, status: statusOfError(err), body: null, error: describeError(err) };
}

/** "group.getName" -> {target: tap.service.group, fn: "getName"}; tap.<path> when not a service. */
function resolveCall(tap, call) {
  let parts = call.split('.');
  if (parts.some((part) => part === '' || part === '__proto__' || part === 'constructor')) {
    throw new Error(`invalid call name: ${call}`);
  }
  let target = tap;
  if (parts[0] === 'tap') {
    parts = parts.slice(1);
  } else if (parts[0] === 'service') {
    target = tap.service;
    parts = parts.slice(1);
  } else if (parts.length > 1 && parts[0] in tap.service) {
    target = tap.service;
  }
  const fn = parts.pop();
  for (const part of parts) {
    target = target[part];
    if (target === undefined || target === null) throw new Error(`${call}: ${part} is not loaded`);
  }
  if (typeof target[fn] !== 'function') throw new Error(`${call}: ${fn} is not a function`);
  return { target, fn };
}

async function runCall(tap, step) {
  const call = step.call;
  let value;
  try {
    const { target, fn } = resolveCall(tap, call);
    const args = decodeArg(step.args || []);
    if (!Array.isArray(args)) throw new Error(`${call}: args must be a list`);
    value = await target[fn](...args);
    if (step.then) {
      const next = step.then;
      const method = typeof next.call === 'string' ? next.call : '';
      if (!method || method === 'constructor' || method === '__proto__' || typeof value[method] !== 'function') {
        throw new Error(`${call}: then.${method} is not a function of its result`);
      }
      const nextArgs = decodeArg(next.args || []);
      if (!Array.isArray(nextArgs)) throw new Error(`${call}: then.args must be a list`);
      value = await value[method](...nextArgs);
    }
  } catch (err) {
    return failure(call, err);
  }
  if (!isTapResponse(value)) {
    return { call, ok: true, status: null, body: toJson(value), error: null };
  }
  // A TapResponse: body() throws a TapResponseStatusError for error statuses; keep the status anyway.
  try {
    return { call, ok: value.isSuccessful(), status: value.status, body: toJson(value.body()), error: null };
  } catch (err) {
    return { call, ok: false, status: value.status, body: null, error: describeError(err) };
  }
}

async function runStep(tap, step) {
  if (step === null || typeof step !== 'object' || typeof step.call !== 'string') {
    return failure(String(step && step.call), new Error('a step needs a "call" string'));
  }
  switch (step.call) {
    case 'sleep':
      await new Promise((resolve) => setTimeout(resolve, Number(step.ms) || 0));
      return { call: 'sleep', ok: true, status: null, body: null, error: null };
    case 'connect':
    case 'disconnect':
      try {
        await tap[step.call]();
        return { call: step.call, ok: true, status: null, body: null, error: null };
      } catch (err) {
        return failure(step.call, err);
      }
    case 'repeat':
      return runRepeat(tap, step);
    case 'configure':
      return runConfigure(tap, step);
    case 'multi':
      return runMulti(tap, step);
    default:
      return runCall(tap, step);
  }
}

async function runRepeat(tap, step) {
  const times = Number(step.times);
  if (!Number.isInteger(times) || times < 0 || !step.step) {
    return failure('repeat', new Error('repeat needs an integer "times" >= 0 and a "step"'));
  }
  let count = 0;
  let firstFailure = null;
  for (let index = 0; index < times; index += 1) {
    const result = await runStep(tap, step.step);
    if (result.ok) count += 1;
    else if (firstFailure === null) firstFailure = { index, ...result };
  }
  return { call: 'repeat', ok: count === times, times, count, firstFailure, status: null, body: null, error: null };
}

async function runConfigure(tap, step) {
  require('@iotize/tap/ext/configurator');
  const calls = [];
  let lastCall = null;
  try {
    const operations = await tap.configurator.setup(decodeArg(step.config), decodeArg(step.options || {}));
    await new Promise((resolve, reject) => {
      operations.asObservable().subscribe({
        next: (event) => {
          if (event && event.call && event.call.path) {
            lastCall = `${event.call.method} ${event.call.path}`;
            calls.push(lastCall);
          }
          if (event && event.error) reject(event.error);
        },
        error: reject,
        complete: resolve,
      });
    });
  } catch (err) {
    const result = failure('configure', err);
    result.error.lastCall = lastCall;
    result.body = { calls };
    return result;
  }
  return { call: 'configure', ok: true, status: null, body: { calls }, error: null };
}

async function runMulti(tap, step) {
  let responses;
  try {
    const calls = (step.calls || []).map((c) => {
      const { target, fn } = resolveCall(tap, `${c.service}.${c.fn}`);
      return target[fn](...decodeArg(c.args || []));
    });
    responses = await tap.service.interface.executeMultipleCalls(calls);
  } catch (err) {
    return failure('multi', err);
  }
  const body = responses.map((response) => {
    let value = null;
    try {
      value = response.isSuccessful() ? toJson(response.body()) : null;
    } catch (err) {
      value = null;
    }
    return { status: response.status, body: value };
  });
  return { call: 'multi', ok: true, status: null, body, error: null };
}

function createProtocol(doc) {
  const host = doc.host || '127.0.0.1';
  if (!Number.isInteger(doc.port)) throw new Error('"port" must be an integer');
  let protocol;
  if (doc.transport === 'tcp') {
    protocol = new TcpProtocol({ host, port: doc.port, ...(doc.tcpIdleMs ? { idleMs: doc.tcpIdleMs } : {}) });
  } else if (doc.transport === 'ws') {
    // The package uses the global WebSocket; Node's own delivers Blobs it cannot read without FileReader.
    global.WebSocket = require('ws');
    const { WebSocketProtocol } = require('@iotize/device-com-websocket.js');
    protocol = new WebSocketProtocol({ url: `ws://${host}:${doc.port}${doc.path || '/'}` });
  } else if (doc.transport === 'mqtt') {
    // The IoTize relay: @iotize/device-com-mqtt.js over npm mqtt 3.0.0, as an app reaches a Tap in the cloud.
    const { connect } = require('mqtt');
    const { createClientMQTTRelayProtocol, DEFAULT_NET_KEY } = require('@iotize/device-com-mqtt.js/tap-cloud');
    if (typeof doc.serialNumber !== 'string') throw new Error('"serialNumber" is required for mqtt');
    return createClientMQTTRelayProtocol({
      connect,
      serialNumber: doc.serialNumber,
      netkey: doc.netkey === undefined ? DEFAULT_NET_KEY : doc.netkey,
      broker: { url: `mqtt://${host}:${doc.port}`, username: doc.brokerUsername, password: doc.brokerPassword },
      protocolOptions: {
        connect: { timeout: doc.connectTimeoutMs || 10000 },
        disconnect: { timeout: 2000 },
        send: { timeout: doc.sendTimeoutMs || 5000 },
      },
    });
  } else {
    throw new Error(`unknown transport ${JSON.stringify(doc.transport)} (tcp, ws or mqtt)`);
  }
  const options = protocol.options;
  protocol.options = {
    connect: { timeout: doc.connectTimeoutMs || options.connect.timeout },
    disconnect: { timeout: options.disconnect.timeout },
    send: { timeout: doc.sendTimeoutMs || options.send.timeout },
  };
  return protocol;
}

async function main() {
  let doc;
  let tap;
  let watchdogMs;
  try {
    doc = JSON.parse(await readStdin());
    if (!doc || !Array.isArray(doc.steps)) throw new Error('"steps" must be a list');
    watchdogMs = watchdogFromArgv(process.argv) || doc.watchdogMs || DEFAULT_WATCHDOG_MS;
    tap = Tap.fromProtocol(createProtocol(doc));
  } catch (err) {
    log('bad input:', err.message);
    return finish(EXIT_BAD_INPUT, { fatal: { kind: 'bad-input', ...describeError(err) } });
  }
  setTimeout(() => {
    log(`watchdog: scenario still running after ${watchdogMs} ms`);
    finish(EXIT_WATCHDOG, { fatal: { kind: 'watchdog', name: 'Watchdog', code: null, message: `timed out after ${watchdogMs} ms` } });
  }, watchdogMs);

  if (doc.autoConnect !== false) {
    try {
      await tap.connect();
    } catch (err) {
      log('connect failed:', err.message);
      return finish(EXIT_BAD_INPUT, { fatal: { kind: 'connect', ...describeError(err) } });
    }
  }
  for (const step of doc.steps) {
    results.push(await runStep(tap, step));
  }
  try {
    if (tap.isConnected()) await tap.disconnect();
  } catch (err) {
    log('disconnect at the end failed:', err.message);
  }
  return finish(0, {});
}

process.on('unhandledRejection', (reason) => {
  // The SDK leaves some rejections unobserved (e.g. a connection observable failing); they are not fatal.
  log('unhandled rejection:', reason && reason.message ? reason.message : String(reason));
});
process.on('uncaughtException', (err) => {
  log('uncaught exception:', err && err.stack ? err.stack : String(err));
  finish(EXIT_CRASH, { fatal: { kind: 'crash', ...describeError(err) } });
});

main().catch((err) => {
  log('crash:', err && err.stack ? err.stack : String(err));
  finish(EXIT_CRASH, { fatal: { kind: 'crash', ...describeError(err) } });
});
