'use strict';
// A Node.js function with a backend connection: opened at init, closed in a
// before-snapshot hook, opened again in an after-restore hook. Each request
// goes over it; the backend (a test's own host) answers with the address it
// sees.
const net = require('node:net');
const { registerBeforeSnapshot, registerAfterRestore } = require('@thaw/snapshot-restore');

const host = process.env.BACKEND_HOST;
const port = Number(process.env.BACKEND_PORT);
let conn = null;
let pending = [];
let buffered = '';

function connect() {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host, port });
    c.setTimeout(3000, () => c.destroy(new Error('backend timeout')));
    c.once('error', reject);
    c.on('data', (d) => {
      buffered += d.toString();
      let i;
      while ((i = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, i);
        buffered = buffered.slice(i + 1);
        const next = pending.shift();
        if (next) next(line);
      }
    });
    pending.push((greeting) => {
      conn = c;
      c.setTimeout(0);
      resolve(greeting);
    });
  });
}

function request() {
  return new Promise((resolve) => {
    pending.push(resolve);
    conn.write('ping\n');
  });
}

let seenAtInit = null;
const ready = connect().then((g) => { seenAtInit = g; });

registerBeforeSnapshot(async () => {
  await ready;
  conn.destroy();
  conn = null;
});
registerAfterRestore(async () => {
  await connect();
});

exports.handler = async () => {
  await ready;
  const reply = await request();
  return { seen_as: reply.split(' ')[0], seen_at_init: seenAtInit };
};
