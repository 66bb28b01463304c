// Shared helpers for the node workloads run by test_clients_node.py.
// Connection details come from the environment; the result is one JSON line on stdout.

export const env = {
  host: process.env.RG_HOST || '127.0.0.1',
  port: Number(process.env.RG_PORT),
  user: process.env.RG_USER,
  pass: process.env.RG_PASS,
  resp: Number(process.env.RG_RESP || '2'),
  prefix: process.env.RG_PREFIX || 'node:' + process.pid,
};

if (!env.port || !env.user || !env.pass) {
  console.error('RG_PORT, RG_USER and RG_PASS are required');
  process.exit(2);
}

// The step in progress, reported when the watchdog fires.
let current = 'start';
export function step(name) {
  current = name;
}

// A hard bound: a hang in the proxy fails the test instead of stalling the suite.
const watchdog = setTimeout(() => {
  console.error(`workload timed out during step: ${current}`);
  process.exit(3);
}, Number(process.env.RG_TIMEOUT_MS || 45000));

export function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error('timeout: ' + what)), ms); }),
  ]).finally(() => clearTimeout(t));
}

// Normalise library-specific shapes (Map, Set, Buffer, Error) to plain JSON.
export function plain(v) {
  if (v === undefined) return null;
  if (v === null) return null;
  if (Buffer.isBuffer(v)) return { buffer_hex: v.toString('hex') };
  if (v instanceof Error) return { error: v.message };
  if (v instanceof Map) {
    const o = {};
    for (const [k, x] of v) o[String(k)] = plain(x);
    return o;
  }
  if (v instanceof Set) return { set: [...v].map(plain).map(String).sort() };
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'object') {
    const o = {};
    for (const k of Object.keys(v).sort()) o[k] = plain(v[k]);
    return o;
  }
  return v;
}

export async function settle(fn) {
  try {
    return { ok: plain(await fn()) };
  } catch (e) {
    return { error: e && e.message ? e.message : String(e) };
  }
}

export function finish(result) {
  clearTimeout(watchdog);
  process.stdout.write(JSON.stringify(result) + '\n');
}

export function fail(e) {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
}

export function binaryBuffer(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = i % 256;
  return b;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
