// Multiplex-mode concurrency workload (run by test_multiplex.py): many node-redis v5 and ioredis
// clients at once through one respguard whose upstream pool is small, so that shared connections
// carry the commands of many clients and pinned ones are contended.
//
// Every client ("worker") owns its keys, channel and values (its name is in all of them), runs a
// bounded number of iterations of a mix (plain commands, pipelines, MULTI/EXEC, WATCH with
// optimistic retry and forced aborts, BLPOP, pub/sub) and checks every reply against what it
// must be. Any reply that is not exactly the expected one is a mismatch (cross-talk, reordering,
// lost or extra replies); any exception is an error. One JSON summary line goes to stdout.
//
// Environment (besides common.mjs's): RG_NR_CLIENTS, RG_IO_CLIENTS, RG_ITERS, RG_SEED, and the
// upstream reached directly (for pushes that must not depend on the pool): RG_DIRECT_PORT,
// RG_DIRECT_PASS, RG_DIRECT_CA.
import fs from 'node:fs';
import { createClient } from 'redis';
import Redis from 'ioredis';
import { env, finish, fail, withTimeout, sleep } from './common.mjs';

const NR_CLIENTS = Number(process.env.RG_NR_CLIENTS || '70');
const IO_CLIENTS = Number(process.env.RG_IO_CLIENTS || '70');
const ITERS = Number(process.env.RG_ITERS || '8');
const SEED = Number(process.env.RG_SEED || '1');
const P = env.prefix;
const OP_TIMEOUT = 30000; // per awaited operation: a hang becomes an error naming the step

const errors = [];
const mismatchSamples = [];
let mismatches = 0;
const counts = {};
const finished = { nr: 0, io: 0 };
const started = { nr: 0, io: 0 };

function count(what, n = 1) {
  counts[what] = (counts[what] || 0) + n;
}

function norm(v) {
  if (v === undefined) return null;
  if (Buffer.isBuffer(v)) return v.toString();
  if (v instanceof Error) return { error: v.message };
  if (Array.isArray(v)) return v.map(norm);
  return v;
}

function same(a, b) {
  return JSON.stringify(norm(a)) === JSON.stringify(norm(b));
}

// A tiny deterministic PRNG per client (mulberry32), so that a failing sequence can be replayed.
function rngFor(name) {
  let h = SEED >>> 0;
  for (const ch of name) h = Math.imul(h ^ ch.charCodeAt(0), 2654435761) >>> 0;
  return () => {
    h = (h + 0x6d2b79f5) >>> 0;
    let t = h;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Operations whose pinned connection waits for something another connection of ours must do
// through the pool (a conflicting SET during WATCH, a publish to our subscriber, a push to our
// BLPOP): with a small pool, too many of them at once would pin every connection and leave the
// other side waiting. One at a time per process keeps the test about respguard, not about pool
// exhaustion.
class Semaphore {
  constructor(n) { this.n = n; this.q = []; }
  async acquire() {
    if (this.n > 0) { this.n--; return; }
    await new Promise((r) => this.q.push(r));
  }
  release() {
    const r = this.q.shift();
    if (r) r(); else this.n++;
  }
}
const crossWait = new Semaphore(1);

// ------------------------------------------------------------------------------------------
// The two libraries behind one small interface (RESP2; integer replies are numbers).
// ------------------------------------------------------------------------------------------

function nrMake(name) {
  const c = createClient({
    socket: { host: env.host, port: env.port, reconnectStrategy: false, connectTimeout: 20000 },
    username: env.user,
    password: env.pass,
    name,
  });
  c.on('error', (e) => errors.push(`${name}: client error event: ${e && e.message}`));
  return c;
}

const NR = {
  lib: 'node-redis',
  make: nrMake,
  connect: (c) => c.connect(),
  quit: (c) => c.quit(),
  call: (c, args) => c.sendCommand(args.map(String)),
  set: (c, k, v) => c.set(k, v),
  get: (c, k) => c.get(k),
  incr: (c, k) => c.incr(k),
  getname: (c) => c.clientGetName(),
  async pipeline(c, cmds) {
    const m = c.multi();
    for (const a of cmds) m.addCommand(a.map(String));
    return m.execAsPipeline();
  },
  async multi(c, cmds) {
    const m = c.multi();
    for (const a of cmds) m.addCommand(a.map(String));
    try {
      return await m.exec();
    } catch (e) {
      if (e && e.constructor && e.constructor.name === 'WatchError') return null;
      throw e;
    }
  },
  watch: (c, k) => c.watch(k),
  async blpop(c, k, t) {
    const r = await c.sendCommand(['BLPOP', k, String(t)]);
    return Array.isArray(r) ? r.map(String) : r; // anything else is reported as it came
  },
  rpush: (c, k, v) => c.rPush(k, v),
  lpop: (c, k) => c.lPop(k),
  publish: (c, ch, m) => c.publish(ch, m),
  async subscribe(c, ch, onMessage) {
    await c.subscribe(ch, (msg, channel) => onMessage(String(channel), String(msg)));
  },
  unsubscribe: (c, ch) => c.unsubscribe(ch),
};

function ioMake(name) {
  const c = new Redis({
    host: env.host,
    port: env.port,
    username: env.user,
    password: env.pass,
    connectionName: name,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 20000,
    lazyConnect: true,
  });
  c.on('error', (e) => errors.push(`${name}: client error event: ${e && e.message}`));
  return c;
}

const pairs = (res) => res.map(([e, v]) => (e ? e : v));

const IO = {
  lib: 'ioredis',
  make: ioMake,
  connect: (c) => c.connect(),
  quit: (c) => c.quit(),
  call: (c, args) => c.call(...args.map(String)),
  set: (c, k, v) => c.set(k, v),
  get: (c, k) => c.get(k),
  incr: (c, k) => c.incr(k),
  getname: (c) => c.client('GETNAME'),
  async pipeline(c, cmds) {
    return pairs(await c.pipeline(cmds.map(([n, ...a]) => [n.toLowerCase(), ...a.map(String)])).exec());
  },
  async multi(c, cmds) {
    const r = await c.multi(cmds.map(([n, ...a]) => [n.toLowerCase(), ...a.map(String)])).exec();
    return r === null ? null : pairs(r);
  },
  watch: (c, k) => c.watch(k),
  async blpop(c, k, t) {
    const r = await c.blpop(k, t);
    return Array.isArray(r) ? r.map(String) : r;
  },
  rpush: (c, k, v) => c.rpush(k, v),
  lpop: (c, k) => c.lpop(k),
  publish: (c, ch, m) => c.publish(ch, m),
  async subscribe(c, ch, onMessage) {
    if (!c.__rgHandlers) {
      c.__rgHandlers = new Map();
      c.on('message', (channel, msg) => {
        const h = c.__rgHandlers.get(String(channel));
        if (h) h(String(channel), String(msg));
        else errors.push(`message on a channel nobody subscribed: ${channel} ${msg}`);
      });
    }
    c.__rgHandlers.set(ch, onMessage);
    await c.subscribe(ch);
  },
  async unsubscribe(c, ch) {
    await c.unsubscribe(ch);
    c.__rgHandlers.delete(ch);
  },
};

// The upstream directly (TLS), for pushes and conflicts that must not need a pooled connection.
let direct = null;
function makeDirect() {
  if (!process.env.RG_DIRECT_PORT) return null;
  const d = new Redis({
    host: '127.0.0.1',
    port: Number(process.env.RG_DIRECT_PORT),
    password: process.env.RG_DIRECT_PASS,
    tls: { ca: fs.readFileSync(process.env.RG_DIRECT_CA), servername: 'localhost' },
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    lazyConnect: true,
  });
  d.on('error', (e) => errors.push(`direct: ${e && e.message}`));
  return d;
}

// ------------------------------------------------------------------------------------------
// One client
// ------------------------------------------------------------------------------------------

async function worker(L, kind, idx) {
  const name = `${kind}${idx}`;
  const K = (s) => `${P}:${name}:${s}`;
  const rnd = rngFor(name);
  const ri = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
  let stepName = 'connect';
  const history = []; // the steps of this client so far, for the report
  const op = (p, what) => withTimeout(Promise.resolve(p), OP_TIMEOUT, `${name} ${what}`);

  function check(what, expected, got) {
    count('checks');
    if (same(expected, got)) return true;
    mismatches++;
    if (mismatchSamples.length < 30) {
      mismatchSamples.push({ lib: L.lib, client: name, step: stepName, what, expected: norm(expected),
        got: norm(got), history: history.slice(-8) });
    }
    return false;
  }

  const a = L.make(name);
  const b = L.make(name + '-b');
  const sub = L.make(name + '-sub');
  started[kind]++;
  try {
    await op(Promise.all([L.connect(a), L.connect(b), L.connect(sub)]), 'connect');
    // state this client knows its keys have
    let counter = 0;
    let txCounter = 0;
    let txListLen = 0;
    let wValue = null;
    let lastS = null;
    const forceIter = ri(0, ITERS - 1);
    const forceViaDirect = rnd() < 0.5 && direct !== null;
    const pubsubIter = ri(0, ITERS - 1);
    const blpopModes = ['pre-other', 'direct-later', 'timeout', 'other-later', 'pre-other', 'direct-later'];

    for (let j = 0; j < ITERS; j++) {
      // --- plain commands, one at a time and several in flight on the same connection
      stepName = 'plain';
      history.push(`it${j}:plain`);
      const v = `${name}:s:${j}:${ri(0, 1e9)}`;
      check('SET', 'OK', await op(L.set(a, K('s'), v), 'SET'));
      lastS = v;
      check('GET', v, await op(L.get(a, K('s')), 'GET'));
      check('INCR', ++counter, await op(L.incr(a, K('n')), 'INCR'));
      const inflight = await op(Promise.all([L.get(a, K('s')), L.incr(a, K('n')), L.getname(a),
        L.incr(a, K('n')), L.call(a, ['STRLEN', K('s')])]), 'in-flight batch');
      counter += 2;
      check('in-flight GET/INCR/CLIENT GETNAME/INCR/STRLEN', [v, counter - 1, name, counter, v.length], inflight);
      count('plain');

      // --- a pipeline of 10-50 commands, each reply checked
      stepName = 'pipeline';
      const n = ri(10, 50);
      history.push(`it${j}:pipeline(${n})`);
      const cmds = [];
      const want = [];
      const model = new Map();
      let pc = 0;
      let plen = 0;
      let alen = 0;
      for (let i = 0; i < n; i++) {
        const t = ri(0, 6);
        if (t === 0) {
          const key = K(`p${j}:${ri(0, 6)}`);
          const val = `${name}:p:${j}:${i}`;
          cmds.push(['SET', key, val]);
          want.push('OK');
          model.set(key, val);
        } else if (t === 1) {
          const key = K(`p${j}:${ri(0, 6)}`);
          cmds.push(['GET', key]);
          want.push(model.has(key) ? model.get(key) : null);
        } else if (t === 2) {
          cmds.push(['INCR', K(`pc${j}`)]);
          want.push(++pc);
        } else if (t === 3) {
          cmds.push(['RPUSH', K(`pl${j}`), `${name}:${i}`]);
          want.push(++plen);
        } else if (t === 4) {
          const piece = `${i}.`;
          cmds.push(['APPEND', K(`pa${j}`), piece]);
          alen += piece.length;
          want.push(alen);
        } else if (t === 5) {
          cmds.push(['ECHO', `${name}:echo:${j}:${i}`]);
          want.push(`${name}:echo:${j}:${i}`);
        } else {
          cmds.push(['CLIENT', 'GETNAME']); // answered by respguard, in its place
          want.push(name);
        }
      }
      const pres = await op(L.pipeline(a, cmds), 'pipeline');
      check(`pipeline of ${n}`, want, pres);
      count('pipelines');
      count('pipelined_commands', n);

      // --- MULTI/EXEC
      stepName = 'multi';
      history.push(`it${j}:multi`);
      const tv = `${name}:t:${j}`;
      const tres = await op(L.multi(a, [['SET', K('t'), tv], ['INCR', K('tn')], ['GET', K('t')],
        ['LPUSH', K('tl'), tv]]), 'MULTI/EXEC');
      check('MULTI SET/INCR/GET/LPUSH EXEC', ['OK', ++txCounter, tv, ++txListLen], tres);
      count('transactions');

      // --- WATCH with optimistic retry; once a forced conflict that must abort the EXEC
      stepName = 'watch';
      const forced = j === forceIter;
      history.push(`it${j}:watch${forced ? (forceViaDirect ? '(forced,direct)' : '(forced,other)') : ''}`);
      const viaOther = forced && !forceViaDirect;
      if (viaOther) await crossWait.acquire();
      try {
        let committed = false;
        for (let attempt = 1; attempt <= 5 && !committed; attempt++) {
          check('WATCH', 'OK', await op(L.watch(a, K('w')), 'WATCH'));
          const cur = await op(L.get(a, K('w')), 'GET watched');
          check(`GET watched key (attempt ${attempt})`, wValue, cur);
          const conflict = forced && attempt === 1;
          if (conflict) {
            const cv = `${name}:conflict:${j}`;
            if (forceViaDirect) check('direct SET (conflict)', 'OK', await op(direct.set(K('w'), cv), 'direct SET'));
            else check('other SET (conflict)', 'OK', await op(L.set(b, K('w'), cv), 'other SET'));
            wValue = cv;
            count('forced_conflicts');
          }
          const nv = `${name}:w:${j}:${attempt}`;
          const wres = await op(L.multi(a, [['SET', K('w'), nv], ['GET', K('w')]]), 'WATCH MULTI/EXEC');
          if (conflict) {
            check('EXEC after a conflicting write is aborted (nil)', null, wres);
            if (wres === null) count('aborts_seen');
          } else {
            check(`EXEC of an unconflicted WATCH commits (attempt ${attempt})`, ['OK', nv], wres);
          }
          if (wres !== null) {
            committed = true;
            wValue = nv;
          }
        }
        check('WATCH cycle committed', true, committed);
      } finally {
        if (viaOther) crossWait.release();
      }
      count('watch_cycles');

      // --- BLPOP with a short timeout, on this client's own list
      if (j % 2 === idx % 2) {
        const mode = blpopModes[(j + idx) % blpopModes.length];
        stepName = `blpop ${mode}`;
        history.push(`it${j}:blpop(${mode})`);
        const lk = K('bl');
        const bv = `${name}:b:${j}`;
        let got;
        let pushed = true;
        if (mode === 'pre-other') {
          check('RPUSH by the other connection', 1, await op(L.rpush(b, lk, bv), 'RPUSH other'));
          got = await op(L.blpop(a, lk, 0.5), 'BLPOP');
          check('BLPOP of a pushed value', [lk, bv], got);
        } else if (mode === 'timeout') {
          pushed = false;
          got = await op(L.blpop(a, lk, 0.1), 'BLPOP timeout');
          check('BLPOP on an empty list times out (nil)', null, got);
        } else if (mode === 'direct-later' && direct) {
          const p = L.blpop(a, lk, 0.5);
          await sleep(20);
          check('direct RPUSH', 1, await op(direct.rpush(lk, bv), 'direct RPUSH'));
          got = await op(p, 'BLPOP released by direct');
        } else {
          await crossWait.acquire();
          try {
            const p = L.blpop(a, lk, 0.5);
            await sleep(20);
            check('RPUSH by the other connection', 1, await op(L.rpush(b, lk, bv), 'RPUSH other'));
            got = await op(p, 'BLPOP released by other');
          } finally {
            crossWait.release();
          }
        }
        if (pushed) {
          if (got === null) {
            // The push may land after the BLPOP timed out (it is timing): then it is in the list.
            count('blpop_late');
            check('LPOP of the value BLPOP missed', bv, await op(L.lpop(a, lk), 'LPOP'));
          } else {
            check('BLPOP got the value this client pushed', [lk, bv], got);
          }
        }
        check('list empty afterwards', null, await op(L.lpop(a, lk), 'LPOP empty'));
        count('blpops');
      }

      // --- pub/sub: this client's subscriber gets exactly what its publisher sent, in order
      if (j === pubsubIter) {
        stepName = 'pubsub';
        history.push(`it${j}:pubsub`);
        await crossWait.acquire();
        try {
          const ch = K('ch');
          const nmsg = ri(3, 10);
          const got = [];
          let done;
          const allIn = new Promise((r) => { done = r; });
          await op(L.subscribe(sub, ch, (channel, msg) => {
            got.push(`${channel === ch ? 'own' : channel} ${msg}`);
            if (got.length === nmsg) done();
          }), 'SUBSCRIBE');
          const sent = [];
          for (let i = 0; i < nmsg; i++) {
            const m = `${name}:m:${j}:${i}`;
            sent.push(`own ${m}`);
            check('PUBLISH reaches exactly one subscriber', 1, await op(L.publish(b, ch, m), 'PUBLISH'));
          }
          await withTimeout(allIn, 10000, `${name} messages`).catch(() => {});
          await op(L.unsubscribe(sub, ch), 'UNSUBSCRIBE');
          await sleep(5);
          check('messages received in order', sent, got);
          count('messages', got.length);
        } finally {
          crossWait.release();
        }
        // The subscriber connection serves commands again, with this client's data.
        check('GET on the former subscriber', lastS, await op(L.get(sub, K('s')), 'GET after unsubscribe'));
        count('pubsub_cycles');
      }
    }
    // What the upstream holds in this client's keys, seen directly (not through respguard).
    if (direct) {
      stepName = 'final check (direct)';
      check('final counter (direct)', String(counter), await op(direct.get(K('n')), 'direct GET n'));
      check('final transaction counter (direct)', String(txCounter), await op(direct.get(K('tn')), 'direct GET tn'));
      check('final transaction list length (direct)', txListLen, await op(direct.llen(K('tl')), 'direct LLEN'));
      check('final watched value (direct)', wValue, await op(direct.get(K('w')), 'direct GET w'));
      check('final string (direct)', lastS, await op(direct.get(K('s')), 'direct GET s'));
    }
    stepName = 'quit';
    await op(Promise.all([L.quit(a), L.quit(b), L.quit(sub)]), 'QUIT');
    finished[kind]++;
  } catch (e) {
    errors.push(`${L.lib} ${name} step ${stepName}: ${e && e.message ? e.message : String(e)}` +
      ` (history: ${history.slice(-6).join(', ')})`);
    for (const c of [a, b, sub]) {
      try { c.disconnect ? c.disconnect() : c.destroy(); } catch (_) { /* closing anyway */ }
    }
  }
}

async function main() {
  direct = makeDirect();
  if (direct) await withTimeout(direct.connect(), 10000, 'direct connect');
  const t0 = Date.now();
  const jobs = [];
  // Interleave the libraries so that both are active from the start.
  for (let i = 0; i < Math.max(NR_CLIENTS, IO_CLIENTS); i++) {
    if (i < NR_CLIENTS) jobs.push(worker(NR, 'nr', i));
    if (i < IO_CLIENTS) jobs.push(worker(IO, 'io', i));
  }
  await Promise.all(jobs);
  if (direct) await direct.quit();
  finish({
    clients: { nr: NR_CLIENTS, io: IO_CLIENTS },
    started,
    finished,
    mismatches,
    mismatch_samples: mismatchSamples,
    errors: errors.slice(0, 50),
    error_count: errors.length,
    counts,
    seconds: (Date.now() - t0) / 1000,
  });
}

main().catch(fail);
