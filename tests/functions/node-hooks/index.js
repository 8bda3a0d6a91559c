'use strict';
// Runtime hooks and per-instance identity, seen from inside a Node.js
// function: two before-snapshot and two after-restore hooks (one async)
// record the order they ran in; FAIL_BEFORE / FAIL_AFTER make one throw.
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const { registerBeforeSnapshot, registerAfterRestore } = require('@thaw/snapshot-restore');

const ran = [];
const initMonotonic = process.hrtime.bigint();

registerBeforeSnapshot(() => ran.push('before-1'));
registerBeforeSnapshot(async (tag) => {
  await new Promise((r) => setTimeout(r, 5));
  ran.push(`before-2:${tag}`);
  if (process.env.FAIL_BEFORE === '1') throw new Error('before-snapshot hook refused');
}, 'x');
registerAfterRestore(() => ran.push(`after-1:${(process.env.THAW_INSTANCE_ID || '').slice(0, 8)}`));
registerAfterRestore(async (tag) => {
  ran.push(`after-2:${tag}`);
  if (process.env.FAIL_AFTER === '1') throw new TypeError('after-restore hook refused');
}, 'y');

function read(p) {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch (e) {
    return `error: ${e.message}`;
  }
}

exports.handler = async (event, context) => ({
  ran,
  random: Math.random(),
  uuid: crypto.randomUUID(),
  bytes: crypto.randomBytes(16).toString('hex'),
  hostname: os.hostname(),
  instance_id: process.env.THAW_INSTANCE_ID,
  boot_id: read('/proc/sys/kernel/random/boot_id'),
  machine_id: read('/etc/machine-id'),
  init_type: process.env.AWS_LAMBDA_INITIALIZATION_TYPE,
  log_stream: context.logStreamName,
  init_monotonic: Number(initMonotonic) / 1e9,
  monotonic: Number(process.hrtime.bigint()) / 1e9,
  secret: process.env.CANARY_TOKEN || null,
});
