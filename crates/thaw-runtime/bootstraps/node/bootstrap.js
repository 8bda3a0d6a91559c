'use strict';
// thaw's Node.js bootstrap: runs a Lambda-style Node.js handler against the AWS
// Lambda Runtime API served by thaw's supervisor.
//
// Standard library only. Reads AWS_LAMBDA_RUNTIME_API, _HANDLER,
// LAMBDA_TASK_ROOT and the AWS_LAMBDA_* description of the function; loads
// `file.function` (CommonJS or ES module, .js/.mjs/.cjs, nested paths), reports
// how long that took in the X-Thaw-Function-Init-Ms header of the first /next,
// then serves invocations forever. Init failures go to /runtime/init/error and
// end the process.
//
// With AWS_LAMBDA_INITIALIZATION_TYPE=snap-start it speaks the SnapStart
// handshake: after init (and, when THAW_SNAPSHOT_TEST_INVOKE=1, one test
// invocation) it runs the before-snapshot hooks registered with
// `@thaw/snapshot-restore` (reverse order), then calls
// GET /runtime/restore/next, which returns in each instance restored from the
// snapshot. It then applies what the answer carries (per-instance and secret
// environment variables; fresh random state: Math.random, OpenSSL's generator
// and Node's crypto caches), runs the after-restore hooks (registration order)
// and serves invocations. Hook failures go to /runtime/init/error
// (Runtime.BeforeSnapshotError) or /runtime/restore/error
// (Runtime.AfterRestoreError) and end the process.
//
// With AWS_LAMBDA_LOG_FORMAT=JSON (the function's LoggingConfig), console's
// methods write Lambda's JSON log lines (timestamp, level, requestId,
// message; errorType, errorMessage and stackTrace for an Error) at
// AWS_LAMBDA_LOG_LEVEL and above.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const { performance } = require('node:perf_hooks');

// The invocation in flight, for JSON log lines.
let currentRequestId;

const LOG_LEVELS = { TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4, FATAL: 5 };

// Lambda's JSON log format for console, when asked for.
function jsonConsole() {
  if (process.env.AWS_LAMBDA_LOG_FORMAT !== 'JSON') return;
  const util = require('node:util');
  const wanted = (process.env.AWS_LAMBDA_LOG_LEVEL || 'INFO').toUpperCase();
  const min = LOG_LEVELS[wanted] ?? LOG_LEVELS.INFO;
  const emit = (level) => (...args) => {
    if (LOG_LEVELS[level] < min) return;
    const doc = {
      timestamp: new Date().toISOString(),
      level,
      requestId: currentRequestId,
      message: util.format(...args),
    };
    const err = args.find((a) => a instanceof Error);
    if (err) {
      doc.errorType = err.name;
      doc.errorMessage = err.message;
      doc.stackTrace = String(err.stack || '').split('\n');
    }
    process.stdout.write(`${JSON.stringify(doc)}\n`);
  };
  console.log = emit('INFO');
  console.info = emit('INFO');
  console.warn = emit('WARN');
  console.error = emit('ERROR');
  console.debug = emit('DEBUG');
  console.trace = emit('TRACE');
}

const API_PREFIX = '/2018-06-01/runtime';
const INIT_MS_HEADER = 'X-Thaw-Function-Init-Ms';
const ERROR_TYPE_HEADER = 'Lambda-Runtime-Function-Error-Type';

function die(message, code = 1) {
  process.stderr.write(`thaw bootstrap: ${message}\n`);
  process.exit(code);
}

const address = process.env.AWS_LAMBDA_RUNTIME_API || '';
const portSep = address.lastIndexOf(':');
if (portSep <= 0 || !/^\d+$/.test(address.slice(portSep + 1))) {
  die(`AWS_LAMBDA_RUNTIME_API is not host:port: ${JSON.stringify(address)}`);
}
const API_HOST = address.slice(0, portSep);
const API_PORT = Number(address.slice(portSep + 1));
// One kept-alive connection. Idle kept-alive sockets are unref'd by the agent, so
// they do not keep the event loop alive (Lambda's "empty event loop" semantics).
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, urlPath, body, headers, retried = false) {
  return new Promise((resolve, reject) => {
    const allHeaders = Object.assign({}, headers);
    if (body !== undefined) allHeaders['Content-Length'] = Buffer.byteLength(body);
    const req = http.request(
      { host: API_HOST, port: API_PORT, method, path: API_PREFIX + urlPath, agent, headers: allHeaders },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', (err) => {
      // A kept-alive connection may have been closed by the server meanwhile.
      if (req.reusedSocket && err.code === 'ECONNRESET' && !retried) {
        request(method, urlPath, body, headers, true).then(resolve, reject);
      } else {
        reject(err);
      }
    });
    req.end(body);
  });
}

class InitFault extends Error {
  constructor(errorType, message, cause) {
    super(message);
    this.name = errorType;
    this.errorType = errorType;
    this.original = cause;
  }
}

function stackLines(err) {
  return err && typeof err.stack === 'string' ? err.stack.split('\n') : [];
}

// Lambda's error document for Node.js: {errorType, errorMessage, trace}.
function errorDoc(err) {
  if (err instanceof InitFault) {
    const trace = [`${err.errorType}: ${err.message}`];
    if (err.original) trace.push(...stackLines(err.original).slice(1));
    return { errorType: err.errorType, errorMessage: err.message, trace };
  }
  if (err instanceof Error || (err && typeof err === 'object' && typeof err.message === 'string')) {
    return {
      errorType: err.name || (err.constructor && err.constructor.name) || 'Error',
      errorMessage: String(err.message),
      trace: stackLines(err),
    };
  }
  let message;
  try {
    message = typeof err === 'string' ? err : JSON.stringify(err);
  } catch (_) {
    message = String(err);
  }
  return { errorType: typeof err, errorMessage: message === undefined ? String(err) : message, trace: [] };
}

function flushOutput() {
  return Promise.all(
    [process.stdout, process.stderr].map(
      (s) =>
        new Promise((resolve) => {
          if (!s.writableLength) resolve();
          else s.write('', () => resolve());
        }),
    ),
  );
}

async function postError(urlPath, doc) {
  await flushOutput();
  const res = await request('POST', urlPath, JSON.stringify(doc), {
    'Content-Type': 'application/json',
    [ERROR_TYPE_HEADER]: doc.errorType,
  });
  if (res.status !== 202) {
    process.stderr.write(`thaw bootstrap: ${urlPath} returned ${res.status}: ${res.body.toString().slice(0, 200)}\n`);
  }
}

// ---------------------------------------------------------------- loading

function isEsmPackage(file) {
  let dir = path.dirname(file);
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        return JSON.parse(fs.readFileSync(pkg, 'utf8')).type === 'module';
      } catch (_) {
        return false;
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return false;
    dir = parent;
  }
}

async function importFile(file) {
  const esm = file.endsWith('.mjs') || (file.endsWith('.js') && isEsmPackage(file));
  if (esm) return import(pathToFileURL(file).href);
  try {
    return require(file);
  } catch (err) {
    if (err && (err.code === 'ERR_REQUIRE_ESM' || err.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
      return import(pathToFileURL(file).href);
    }
    throw err;
  }
}

function classifyLoadError(err) {
  if (err instanceof InitFault) return err;
  if (err instanceof SyntaxError) {
    return new InitFault('Runtime.UserCodeSyntaxError', `${err.name}: ${err.message}`, err);
  }
  if (err && (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND')) {
    return new InitFault('Runtime.ImportModuleError', `${err.name}: ${err.message}`, err);
  }
  return err;
}

async function loadModule(taskRoot, moduleName) {
  const base = path.resolve(taskRoot, moduleName);
  for (const ext of ['.js', '.mjs', '.cjs']) {
    if (fs.existsSync(base + ext)) return importFile(base + ext);
  }
  // Not a file of the function: maybe a directory or a package in node_modules.
  let resolved;
  try {
    resolved = require.resolve(moduleName.includes('/') ? base : moduleName, { paths: [taskRoot] });
  } catch (err) {
    if (err && err.code === 'MODULE_NOT_FOUND') {
      const msg = `Error: Cannot find module '${moduleName}'\nRequire stack:\n- ${__filename}`;
      throw new InitFault('Runtime.ImportModuleError', msg, err);
    }
    throw err;
  }
  return importFile(resolved);
}

async function loadHandler(taskRoot, handlerString) {
  if (handlerString.includes('..')) {
    throw new InitFault(
      'Runtime.MalformedHandlerName',
      "'../' not allowed in handler name. Use absolute paths instead.",
    );
  }
  const slash = handlerString.lastIndexOf('/');
  const dir = handlerString.slice(0, slash + 1);
  const base = handlerString.slice(slash + 1);
  const dot = base.indexOf('.');
  if (dot <= 0 || dot === base.length - 1) {
    throw new InitFault('Runtime.MalformedHandlerName', `Bad handler ${handlerString}`);
  }
  const moduleName = dir + base.slice(0, dot);
  let mod;
  try {
    mod = await loadModule(taskRoot, moduleName);
  } catch (err) {
    throw classifyLoadError(err);
  }
  let fn = mod;
  for (const part of base.slice(dot + 1).split('.')) {
    fn = fn === undefined || fn === null ? undefined : fn[part];
  }
  if (fn === undefined || fn === null) {
    throw new InitFault('Runtime.HandlerNotFound', `${handlerString} is undefined or not exported`);
  }
  if (typeof fn !== 'function') {
    throw new InitFault('Runtime.HandlerNotFound', `${handlerString} is not a function`);
  }
  return fn;
}

// ---------------------------------------------------------------- invoking

function parseJsonHeader(value) {
  if (!value) return undefined;
  try {
    return JSON.parse(value);
  } catch (_) {
    return undefined;
  }
}

function makeContext(headers) {
  const deadline = Number(headers['lambda-runtime-deadline-ms']) || 0;
  const env = process.env;
  const context = {
    callbackWaitsForEmptyEventLoop: true,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: headers['lambda-runtime-aws-request-id'],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    getRemainingTimeInMillis: () => Math.max(deadline - Date.now(), 0),
  };
  const clientContext = parseJsonHeader(headers['lambda-runtime-client-context']);
  if (clientContext !== undefined) context.clientContext = clientContext;
  const identity = parseJsonHeader(headers['lambda-runtime-cognito-identity']);
  if (identity !== undefined) {
    context.identity = {
      cognitoIdentityId: identity.cognitoIdentityId,
      cognitoIdentityPoolId: identity.cognitoIdentityPoolId,
    };
  }
  return context;
}

// The invocation in flight: lets process-level error handlers finish it.
let inFlight = null;
// Until the handler is loaded, an uncaught error is an init error.
let initializing = true;

// Run the handler; resolves with {ok, value} or {ok: false, error}. Supports
// async handlers (a returned promise), callbacks (which by default wait for the
// event loop to empty, as Lambda does), the legacy context.succeed/fail/done, and
// handlers that just stop doing work (the result is then null).
function runHandler(handler, event, context) {
  return new Promise((resolve) => {
    let settled = false;
    let waiting = null;
    const finish = (outcome) => {
      if (settled) return;
      settled = true;
      process.removeListener('beforeExit', onEmptyLoop);
      inFlight = null;
      resolve(outcome);
    };
    const onEmptyLoop = () => finish(waiting || { ok: true, value: null });
    process.on('beforeExit', onEmptyLoop);
    inFlight = { finish };

    const outcomeOf = (err, value) =>
      err !== undefined && err !== null ? { ok: false, error: err } : { ok: true, value };
    const callback = (err, value) => {
      const outcome = outcomeOf(err, value);
      if (context.callbackWaitsForEmptyEventLoop) {
        if (!waiting) waiting = outcome;
      } else {
        finish(outcome);
      }
    };
    context.succeed = (value) => finish({ ok: true, value });
    context.fail = (err) => finish({ ok: false, error: err === undefined || err === null ? new Error('handled') : err });
    context.done = (err, value) => finish(outcomeOf(err, value));

    let result;
    try {
      result = handler(event, context, callback);
    } catch (err) {
      finish({ ok: false, error: err });
      return;
    }
    if (result && typeof result.then === 'function') {
      result.then(
        (value) => finish({ ok: true, value }),
        (err) => finish({ ok: false, error: err }),
      );
    }
  });
}

async function invoke(handler, res) {
  const headers = res.headers;
  const requestId = headers['lambda-runtime-aws-request-id'] || '';
  currentRequestId = requestId;
  if (headers['lambda-runtime-trace-id']) process.env._X_AMZN_TRACE_ID = headers['lambda-runtime-trace-id'];
  else delete process.env._X_AMZN_TRACE_ID;
  const context = makeContext(headers);
  const base = `/invocation/${requestId}`;

  let event;
  try {
    event = res.body.length ? JSON.parse(res.body.toString('utf8')) : null;
  } catch (err) {
    await postError(`${base}/error`, {
      errorType: 'Runtime.UnmarshalError',
      errorMessage: `Unable to unmarshal input: ${err.message}`,
      trace: [],
    });
    return;
  }
  const outcome = await runHandler(handler, event, context);
  let body;
  let error = outcome.ok ? null : outcome.doc || errorDoc(outcome.error);
  if (outcome.ok) {
    try {
      body = outcome.value === undefined ? 'null' : JSON.stringify(outcome.value);
      if (body === undefined) body = 'null';
    } catch (err) {
      error = { errorType: 'Runtime.MarshalError', errorMessage: `Unable to marshal response: ${err.message}`, trace: [] };
    }
  }
  if (error) {
    if (!outcome.doc) console.error('Invoke Error', JSON.stringify(error));
    await postError(`${base}/error`, error);
    if (outcome.fatal) process.exit(outcome.fatal);
    return;
  }
  await flushOutput();
  const posted = await request('POST', `${base}/response`, body, { 'Content-Type': 'application/json' });
  if (posted.status !== 202) {
    process.stderr.write(`thaw bootstrap: the response was refused (${posted.status}): ${posted.body.toString().slice(0, 300)}\n`);
  }
}

// An error nobody caught ends the process, as in Lambda; the invocation in
// flight (if any) gets it as its error first.
function onFatal(errorType, err, exitCode) {
  const doc = errorDoc(err);
  if (errorType) doc.errorType = errorType;
  console.error(errorType || 'Uncaught Exception', JSON.stringify(doc));
  if (inFlight) {
    inFlight.finish({ ok: false, error: err, fatal: exitCode, doc });
  } else if (initializing) {
    initializing = false;
    postError('/init/error', doc).finally(() => process.exit(exitCode));
  } else {
    process.exit(exitCode);
  }
}

process.on('uncaughtException', (err) => onFatal(null, err, 129));
process.on('unhandledRejection', (reason) => {
  const err = reason instanceof Error ? reason : new Error(String(reason));
  onFatal('Runtime.UnhandledPromiseRejection', err, 128);
});

async function reportInitError(err) {
  const doc = errorDoc(err);
  console.error('Init Error', JSON.stringify(doc));
  try {
    await postError('/init/error', doc);
  } catch (e) {
    process.stderr.write(`thaw bootstrap: cannot report the init error: ${e.message}\n`);
  }
}

// ---------------------------------------------------------------- snapshots

const HOOK_TIMEOUT_MS = 10000;
const hooksModule = path.join(__dirname, 'modules', '@thaw', 'snapshot-restore');

async function runHook(fn, args, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} hook ${fn.name || '(anonymous)'} ran longer than ${HOOK_TIMEOUT_MS / 1000} s`)),
      HOOK_TIMEOUT_MS,
    );
  });
  try {
    await Promise.race([Promise.resolve().then(() => fn(...args)), timeout]);
  } finally {
    // No timer may be left pending when the instance is snapshotted.
    clearTimeout(timer);
  }
}

// Math.random backed by the kernel's generator, read in blocks: V8's own
// state (and the entropy it was seeded from) is part of the snapshot, so
// every instance restored from it would draw the same numbers.
function freshMathRandom() {
  const buf = Buffer.alloc(4096);
  let off = buf.length;
  let fd = -1;
  Math.random = function random() {
    if (off === buf.length) {
      if (fd < 0) fd = fs.openSync('/dev/urandom', 'r');
      fs.readSync(fd, buf, 0, buf.length, null);
      off = 0;
    }
    // 53 random bits, as a double in [0, 1).
    const hi = buf.readUInt32LE(off) >>> 5;
    const lo = buf.readUInt32LE(off + 4) >>> 6;
    off += 8;
    return (hi * 67108864 + lo) / 9007199254740992;
  };
}

// Node caches random bytes for randomUUID (128 UUIDs) and randomInt (1024
// values). A snapshot run notes which of them the function used, so that a
// restore pays for flushing only those (a few microseconds per value here).
const usedCryptoCaches = { uuid: false, int: false };

let reseedAddon = null;

function loadReseedAddon() {
  const addon = { exports: {} };
  process.dlopen(addon, path.join(__dirname, 'thaw_reseed.node'));
  return addon.exports;
}

function trackCryptoCaches() {
  // Loaded before the snapshot, so a restore does not pay for it.
  try {
    reseedAddon = loadReseedAddon();
  } catch (err) {
    process.stderr.write(`thaw bootstrap: cannot load the reseed addon: ${err.message}\n`);
  }
  const crypto = require('node:crypto');
  const { randomUUID, randomInt } = crypto;
  crypto.randomUUID = function randomUUID_(options) {
    usedCryptoCaches.uuid = true;
    return randomUUID(options);
  };
  crypto.randomInt = function randomInt_(...args) {
    usedCryptoCaches.int = true;
    return randomInt(...args);
  };
  const web = globalThis.crypto;
  if (web && typeof web.randomUUID === 'function') {
    const webUUID = web.randomUUID;
    web.randomUUID = function randomUUID_() {
      usedCryptoCaches.uuid = true;
      return webUUID.call(web);
    };
  }
}

// Fresh random state for everything in the process that had its own.
function reseed() {
  freshMathRandom();
  const crypto = require('node:crypto');
  // OpenSSL's DRBGs reseed on fork, not on restore: reseed them from the
  // kernel with prediction resistance (a small addon; Node exports OpenSSL).
  try {
    if (!reseedAddon) reseedAddon = loadReseedAddon();
    if (!reseedAddon.reseed()) throw new Error('EVP_RAND_reseed failed');
  } catch (err) {
    process.stderr.write(`thaw bootstrap: cannot reseed OpenSSL: ${err.message}\n`);
  }
  // Drawing one full batch from a cache makes it refill from the reseeded
  // generator, whatever position it was left at.
  if (usedCryptoCaches.uuid) for (let i = 0; i < 128; i++) crypto.randomUUID();
  if (usedCryptoCaches.int) for (let i = 0; i < 1024; i++) crypto.randomInt(2);
}

function applyRestore(body) {
  const doc = body.length ? JSON.parse(body.toString('utf8')) : {};
  for (const [name, value] of doc.environment || []) process.env[name] = value;
  if (doc.reseed !== false) reseed();
}

async function snapshotHandshake(nextHeaders) {
  const hooks = require(hooksModule);
  try {
    const before = hooks.getBeforeSnapshot();
    // Reverse order of registration.
    while (before.length) {
      const [fn, args] = before.pop();
      await runHook(fn, args, 'before-snapshot');
    }
  } catch (err) {
    const doc = errorDoc(err);
    doc.errorType = 'Runtime.BeforeSnapshotError';
    doc.errorMessage = `${err && err.name ? err.name : 'Error'}: ${err && err.message}`;
    console.error('Before-snapshot hook failed', JSON.stringify(doc));
    try {
      await postError('/init/error', doc);
    } catch (e) {
      process.stderr.write(`thaw bootstrap: cannot report the hook error: ${e.message}\n`);
    }
    process.exit(64);
  }
  // Compile what runs right after the restore now (V8 compiles a function
  // on its first call), so that every restored instance does not.
  applyRestore(Buffer.from('{"environment":[],"reseed":false}'));
  await runHook(() => {}, [], 'warm-up');
  await flushOutput();
  let res;
  try {
    res = await request('GET', '/restore/next', undefined, nextHeaders);
  } catch (err) {
    die(`the Runtime API is gone: ${err.message}`);
  }
  if (res.status !== 200) die(`/restore/next returned ${res.status}: ${res.body.toString().slice(0, 200)}`);
  try {
    applyRestore(res.body);
    for (const [fn, args] of hooks.getAfterRestore().slice()) {
      await runHook(fn, args, 'after-restore');
    }
  } catch (err) {
    const doc = errorDoc(err);
    doc.errorType = 'Runtime.AfterRestoreError';
    doc.errorMessage = `${err && err.name ? err.name : 'Error'}: ${err && err.message}`;
    console.error('After-restore hook failed', JSON.stringify(doc));
    try {
      await postError('/restore/error', doc);
    } catch (e) {
      process.stderr.write(`thaw bootstrap: cannot report the hook error: ${e.message}\n`);
    }
    process.exit(65);
  }
}

async function next(nextHeaders) {
  let res;
  try {
    res = await request('GET', '/invocation/next', undefined, nextHeaders);
  } catch (err) {
    die(`the Runtime API is gone: ${err.message}`);
  }
  if (res.status !== 200) die(`/invocation/next returned ${res.status}: ${res.body.toString().slice(0, 200)}`);
  return res;
}

async function serveOne(handler, res) {
  try {
    await invoke(handler, res);
  } catch (err) {
    die(`cannot report the result: ${err.message}`);
  }
}

async function main() {
  jsonConsole();
  const taskRoot = process.env.LAMBDA_TASK_ROOT || '/var/task';
  if (process.env.AWS_LAMBDA_INITIALIZATION_TYPE === 'snap-start') trackCryptoCaches();
  const started = performance.now();
  let handler;
  try {
    handler = await loadHandler(taskRoot, process.env._HANDLER || '');
  } catch (err) {
    initializing = false;
    await reportInitError(err);
    process.exit(1);
  }
  initializing = false;
  const initMs = performance.now() - started;

  let nextHeaders = { [INIT_MS_HEADER]: initMs.toFixed(3) };
  if (process.env.AWS_LAMBDA_INITIALIZATION_TYPE === 'snap-start') {
    if (process.env.THAW_SNAPSHOT_TEST_INVOKE === '1') {
      // Warm up what the first invocation loads or compiles (V8 compiles
      // lazily), so the snapshot holds it too.
      const res = await next(nextHeaders);
      nextHeaders = {};
      await serveOne(handler, res);
    }
    await snapshotHandshake(nextHeaders);
    nextHeaders = {};
  }
  for (;;) {
    const res = await next(nextHeaders);
    nextHeaders = {};
    await serveOne(handler, res);
  }
}

main();
