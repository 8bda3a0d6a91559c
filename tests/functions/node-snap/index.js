// Snapshot test function: builds state during init (a large array, modules,
// JIT-compiled hot code, a pending timer), then proves after a restore that it
// survived, that instances are independent, and that a restored instance
// times out and serves like any other.
const crypto = require('crypto');
const os = require('os');
const zlib = require('zlib');

const INIT_ID = crypto.randomUUID();
const BIG = Array.from({ length: 1_000_000 }, (_, i) => i * 3);
function hot(n) { let s = 0; for (let i = 0; i < n; i++) s = (s + i * i) % 1000003; return s; }
for (let i = 0; i < 5000; i++) hot(1000); // optimised by V8 before the snapshot
const DIGEST = crypto.createHash('sha256').update(zlib.gzipSync(Buffer.from('thaw'.repeat(1000)))).digest('hex');
let ticks = 0;
setInterval(() => { ticks++; }, 10).unref();
const store = {};
let count = 0;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

exports.handler = async (event, context) => {
  switch (event.action) {
    case 'write': store[event.key] = event.value; return { ok: true };
    case 'read': return { value: store[event.key] ?? null };
    case 'state': {
      const t0 = ticks;
      await sleep(100);
      return {
        init_id: INIT_ID, big: BIG.length, b777: BIG[777], digest: DIGEST, hot: hot(100000),
        pid: process.pid, hostname: os.hostname(), time: Date.now() / 1000, request_id: context.awsRequestId,
        snap: store.snap ?? null, advanced: ticks > t0, node: process.version,
      };
    }
    case 'count': count += 1; return { count };
    case 'sleep': await sleep(event.seconds * 1000); return { slept: true };
    case 'isolate': store.mine = event.value; await sleep(event.hold_ms ?? 0); return { read: store.mine, hostname: os.hostname() };
    default: return { echo: event };
  }
};
