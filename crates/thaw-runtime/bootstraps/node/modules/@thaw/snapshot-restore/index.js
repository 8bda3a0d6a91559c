'use strict';
// Runtime hooks for snapshots, for Node.js functions on thaw (the Node.js
// counterpart of Python's `snapshot_restore_py`).
//
//   const { registerBeforeSnapshot, registerAfterRestore } = require('@thaw/snapshot-restore');
//   registerBeforeSnapshot(async () => { await pool.end(); });
//   registerAfterRestore(() => { pool = connect(process.env.DB_URL); });
//
// (From an ES module: `createRequire(import.meta.url)('@thaw/snapshot-restore')`.)
//
// thaw's bootstrap runs the before-snapshot hooks in reverse order of
// registration once init (and the snapshot's test invocation) is done, and
// the after-restore hooks in order of registration after every restore,
// before the first invocation. A hook may return a promise; each has 10
// seconds. A hook that throws (or rejects, or times out) fails the snapshot
// or the restore. The registry lives on the global object, so every copy of
// this module shares it.

const KEY = Symbol.for('thaw.snapshot-restore.registry');
const registry = (globalThis[KEY] ??= { beforeSnapshot: [], afterRestore: [] });

function check(fn) {
  if (typeof fn !== 'function') throw new TypeError('a hook must be a function');
  return fn;
}

/** Runs `fn(...args)` before the snapshot is taken. Returns `fn`. */
function registerBeforeSnapshot(fn, ...args) {
  registry.beforeSnapshot.push([check(fn), args]);
  return fn;
}

/** Runs `fn(...args)` after each restore, before the first invocation. Returns `fn`. */
function registerAfterRestore(fn, ...args) {
  registry.afterRestore.push([check(fn), args]);
  return fn;
}

/** The registered before-snapshot hooks, as [fn, args], in registration order. */
function getBeforeSnapshot() {
  return registry.beforeSnapshot;
}

/** The registered after-restore hooks, as [fn, args], in registration order. */
function getAfterRestore() {
  return registry.afterRestore;
}

module.exports = { registerBeforeSnapshot, registerAfterRestore, getBeforeSnapshot, getAfterRestore };
