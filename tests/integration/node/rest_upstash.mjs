// @upstash/redis (the real SDK, pinned in package.json) against respguard's REST listener; run by
// test_rest_upstash.py. The token is RG_PASS, the REST port RG_PORT; the SDK is configured by
//   RG_SCHEME        http (default) or https (the CA comes from NODE_EXTRA_CA_CERTS)
//   RG_AUTOPIPELINE  1 (the SDK's default: single commands batched to /pipeline) or 0 (POST /)
//   RG_ENCODING      base64 (the SDK's default: Upstash-Encoding: base64) or json (plain JSON)
//   RG_SCENARIO      main | unauthorized | ratelimit | probe
//   RG_OTHER_KEY     a key outside the user's ~pattern (main)
//   RG_RAW           JSON {key: hex} of values the test wrote upstream itself (main)
//   RG_TOKENS        JSON list of tokens that must be refused (unauthorized)
//   RG_PROBE         JSON list of commands to send one by one with redis.exec (probe)
// Every HTTP exchange goes through a wrapper of the global fetch (the SDK calls fetch) and is
// reported in "http": method, path, status, the upstash-sync-token sent and received, response
// headers and body, so the test can look for secrets in everything respguard answered.
// The result is one JSON line on stdout.
import { Redis } from '@upstash/redis';
import { env, settle, finish, fail, step, plain } from './common.mjs';

const scheme = process.env.RG_SCHEME || 'http';
const url = `${scheme}://${env.host}:${env.port}`;
const autoPipelining = (process.env.RG_AUTOPIPELINE || '1') === '1';
const encoding = process.env.RG_ENCODING || 'base64';
const scenario = process.env.RG_SCENARIO || 'main';
const P = env.prefix;
const k = (s) => `${P}:${s}`;

// ---------------------------------------------------------------------------------------------
// the fetch wrapper
// ---------------------------------------------------------------------------------------------
const exchanges = [];
const networkErrors = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (input, opts = {}) => {
  const u = new URL(String(input));
  const h = opts.headers || {};
  const sentSync = Object.hasOwn(h, 'upstash-sync-token') ? h['upstash-sync-token'] : null;
  let res;
  try {
    res = await realFetch(input, opts);
  } catch (e) {
    const cause = e && e.cause ? ` (${e.cause.message || e.cause})` : '';
    networkErrors.push(`${opts.method || 'GET'} ${u.pathname}: ${e && e.message}${cause}`);
    throw e;
  }
  const body = await res.clone().text();
  exchanges.push({
    method: opts.method || 'GET',
    path: u.pathname + u.search,
    encoding: h['Upstash-Encoding'] || null,
    request: typeof opts.body === 'string' ? opts.body : null,
    status: res.status,
    sent_sync: sentSync,
    recv_sync: res.headers.get('upstash-sync-token'),
    content_type: res.headers.get('content-type'),
    headers: Object.fromEntries(res.headers),
    body,
  });
  return res;
};

function client(token = env.pass) {
  const opts = { url, token, enableAutoPipelining: autoPipelining };
  if (encoding === 'json') opts.responseEncoding = false;
  return new Redis(opts);
}

const errorText = (e) => (e && e.message ? e.message : String(e));

// ---------------------------------------------------------------------------------------------
// main: a user scoped to ~app:* runs a realistic mix of commands
// ---------------------------------------------------------------------------------------------
async function main(redis) {
  const r = {};
  const other = process.env.RG_OTHER_KEY;

  step('strings');
  r.set = await redis.set(k('s'), 'v1');
  r.get = await redis.get(k('s'));
  r.get_missing = await redis.get(k('missing'));
  r.set_ex = await redis.set(k('ex'), 'e', { ex: 100 });
  const ttl = await redis.ttl(k('ex'));
  r.ttl_ok = ttl > 0 && ttl <= 100;
  r.set_nx_existing = await redis.set(k('s'), 'v2', { nx: true });
  r.set_nx_new = await redis.set(k('nx'), 'n', { nx: true });
  r.set_px = await redis.set(k('px'), 'p', { px: 50000 });
  const pttl = await redis.pttl(k('px'));
  r.pttl_ok = pttl > 0 && pttl <= 50000;
  r.set_xx_get = await redis.set(k('s'), 'v3', { xx: true, get: true });
  r.incr = await redis.incr(k('n'));
  r.incrby = await redis.incrby(k('n'), 10);
  r.decr = await redis.decr(k('n'));
  r.incrbyfloat = await redis.incrbyfloat(k('f'), 1.5);
  await redis.set(k('num'), 42);
  r.get_number = await redis.get(k('num'));
  await redis.set(k('float'), 0.1);
  r.get_float = await redis.get(k('float'));
  await redis.set(k('bool'), true);
  r.get_bool = await redis.get(k('bool'));
  r.mget = await redis.mget(k('s'), k('missing'), k('num'));
  r.append = await redis.append(k('s'), '-more');
  r.strlen = await redis.strlen(k('s'));
  r.del = await redis.del(k('nx'), k('px'), k('missing'));
  r.exists = await redis.exists(k('nx'), k('s'));
  r.ping = await redis.ping();
  r.echo = await redis.echo('hello');

  step('hashes');
  r.hset = await redis.hset(k('h'), { f1: 'a', f2: 2, f3: { x: 1 } });
  r.hgetall = await redis.hgetall(k('h'));
  r.hget = await redis.hget(k('h'), 'f1');
  r.hincrby = await redis.hincrby(k('h'), 'cnt', 3);
  r.hmget = await redis.hmget(k('h'), 'f1', 'nope');
  r.hgetall_missing = await redis.hgetall(k('nohash'));

  step('sorted sets');
  r.zadd = await redis.zadd(k('z'), { score: 1, member: 'a' }, { score: 2.5, member: 'b' });
  r.zrange_withscores = await redis.zrange(k('z'), 0, -1, { withScores: true });
  r.zrange = await redis.zrange(k('z'), 0, -1);
  r.zscore = await redis.zscore(k('z'), 'b');
  r.zincrby = await redis.zincrby(k('z'), 2, 'a');
  r.zrange_after = await redis.zrange(k('z'), 0, -1, { withScores: true });

  step('lists and sets');
  r.lpush = await redis.lpush(k('l'), 'a', 'b', 'c');
  r.lrange = await redis.lrange(k('l'), 0, -1);
  r.rpop = await redis.rpop(k('l'));
  r.rpush = await redis.rpush(k('l'), 'z');
  r.llen = await redis.llen(k('l'));
  r.lrange_after = await redis.lrange(k('l'), 0, -1);
  r.sadd = await redis.sadd(k('set'), 'm1', 'm2');
  r.smembers = (await redis.smembers(k('set'))).sort();
  r.sismember = await redis.sismember(k('set'), 'm2');

  step('json objects');
  const obj = { name: 'ünïcode 😀', n: 1.5, list: [1, 'two', null, true], nested: { a: { b: 'c' } }, empty: {} };
  r.json_object = obj;
  r.json_set = await redis.set(k('json'), obj);
  r.json_get = await redis.get(k('json'));
  const arr = [1, { two: 2 }, 'three'];
  await redis.set(k('jsonarr'), arr);
  r.json_array = await redis.get(k('jsonarr'));

  step('binary and unicode');
  const latin1 = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));
  const random = Buffer.from(Array.from({ length: 48 }, () => Math.floor(Math.random() * 256)));
  const values = {
    nul: 'a\u0000b\u0000',
    emoji: '😀🎉 ünïcödé 中文 עברית',
    latin1,
    controls: '\r\n\t"\\/\u0001\u001f\u007f',
    random_base64: random.toString('base64'),
    big: 'x'.repeat(150000) + '😀' + 'y'.repeat(50000),
  };
  r.binary = {};
  for (const [name, v] of Object.entries(values)) {
    const key = k('bin:' + name);
    await redis.set(key, v);
    const got = await redis.get(key);
    r.binary[name] = {
      key,
      utf8_hex: name === 'big' ? null : Buffer.from(v, 'utf8').toString('hex'),
      utf8_len: Buffer.byteLength(v, 'utf8'),
      roundtrip: got === v,
      got: got === v || name === 'big' ? null : got,
    };
  }
  const ukey = k('ключ😀');
  r.unicode_key_set = await redis.set(ukey, 'u');
  r.unicode_key_get = await redis.get(ukey);
  const field = 'f\u0000😀';
  r.binary_hset = await redis.hset(k('hbin'), { [field]: 'v\u0000ü' });
  const hb = await redis.hgetall(k('hbin'));
  r.binary_hash_ok = hb !== null && Object.keys(hb).length === 1 && hb[field] === 'v\u0000ü';
  // values the test wrote upstream itself, some not UTF-8: with base64 the SDK decodes the bytes
  // with TextDecoder, so that is what it must return; plain JSON cannot carry non-UTF-8 bytes.
  r.raw = {};
  for (const [key, hex] of Object.entries(JSON.parse(process.env.RG_RAW || '{}'))) {
    const bytes = Buffer.from(hex, 'hex');
    let valid = true;
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      valid = false;
    }
    if (!valid && encoding !== 'base64') continue;
    const got = await redis.get(key);
    const want = new TextDecoder().decode(bytes);
    r.raw[key] = got === want ? true : { got, want };
  }

  step('pipeline');
  const p = redis.pipeline();
  p.set(k('p1'), 'x');
  p.incr(k('pc'));
  p.get(k('p1'));
  p.hset(k('ph'), { a: 1 });
  p.hgetall(k('ph'));
  p.lpush(k('pl'), 'q');
  p.zadd(k('pz'), { score: 3, member: 'm' });
  p.zrange(k('pz'), 0, -1, { withScores: true });
  p.del(k('p1'));
  p.get(k('p1'));
  r.pipeline = await p.exec();
  const pe = redis.pipeline();
  pe.set(k('p2'), 'str');
  pe.incr(k('p2'));
  pe.get(other);
  pe.get(k('p2'));
  r.pipeline_keep_errors = await pe.exec({ keepErrors: true });
  const pt = redis.pipeline();
  pt.set(k('p3'), 'str');
  pt.incr(k('p3'));
  r.pipeline_throws = await settle(() => pt.exec());

  step('multi-exec');
  const tx = redis.multi();
  tx.set(k('t1'), 'a');
  tx.incr(k('tc'));
  tx.get(k('t1'));
  tx.lpush(k('tl'), 'x', 'y');
  tx.hgetall(k('h'));
  r.multi = await tx.exec();
  const tx2 = redis.multi();
  tx2.set(k('t2'), 's');
  tx2.incr(k('t2'));
  tx2.set(k('t3'), 'after');
  r.multi_runtime_error = await tx2.exec({ keepErrors: true });
  // a refusal by respguard discards the whole transaction: t4 must not be written
  const tx3 = redis.multi();
  tx3.set(k('t4'), 'nope');
  tx3.get(other);
  r.multi_refused = await settle(() => tx3.exec());
  // a queue-time error (HSET with no field) discards it too: t5 must not be written
  const tx4 = redis.multi();
  tx4.set(k('t5'), 'nope');
  tx4.hset(k('t5h'), {});
  r.multi_queue_error = await settle(() => tx4.exec());

  step('refusals and errors');
  r.noperm_get = await settle(() => redis.get(other));
  r.noperm_set = await settle(() => redis.set(other, 'x'));
  r.noperm_keys = await settle(() => redis.keys('*'));
  r.noperm_flushdb = await settle(() => redis.flushdb());
  r.wrongtype = await settle(() => redis.lpush(k('s'), 'x'));
  r.blpop = await settle(() => redis.exec(['BLPOP', k('l'), '1']));
  r.multi_cmd = await settle(() => redis.exec(['MULTI']));
  r.unknown = await settle(() => redis.exec(['NOSUCHCMD', 'x']));
  r.after_errors = await redis.get(k('s'));

  step('scripts');
  r.eval = await redis.eval('return {KEYS[1], ARGV[1]}', [k('ev')], ['x']);

  step('concurrency');
  const before = exchanges.length;
  r.concurrent = await Promise.all(Array.from({ length: 20 }, () => redis.incr(k('cnt'))));
  r.concurrent_requests = exchanges.length - before;
  const many = await Promise.all(Array.from({ length: 10 }, (_, i) => redis.set(k('c' + i), 'v' + i)));
  r.concurrent_sets = many;
  r.concurrent_gets = await Promise.all(Array.from({ length: 10 }, (_, i) => redis.get(k('c' + i))));

  step('read-your-writes');
  // the SDK sends the token it last received in upstash-sync-token; respguard echoes it
  redis.readYourWritesSyncToken = 'rg-sync-token-1';
  r.sync_set = await redis.set(k('sync'), 'y');
  r.sync_get = await redis.get(k('sync'));
  r.sync_token_after = redis.readYourWritesSyncToken;
  const tx5 = redis.multi();
  tx5.get(k('sync'));
  r.sync_multi = await tx5.exec();
  return r;
}

// ---------------------------------------------------------------------------------------------
// unauthorized: every token of RG_TOKENS is refused, whatever the route
// ---------------------------------------------------------------------------------------------
async function unauthorized() {
  const r = { tokens: [] };
  for (const token of JSON.parse(process.env.RG_TOKENS)) {
    const redis = client(token);
    const one = {};
    one.get = await settle(() => redis.get(k('x')));
    one.set = await settle(() => redis.set(k('unauth'), 'v'));
    one.keys = await settle(() => redis.keys('*')); // never auto-pipelined: POST /
    const p = redis.pipeline();
    p.set(k('unauth'), 'v');
    p.get(k('unauth'));
    one.pipeline = await settle(() => p.exec());
    const tx = redis.multi();
    tx.set(k('unauth'), 'v');
    one.multi = await settle(() => tx.exec());
    r.tokens.push(one);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// ratelimit: the user's bucket (burst 3, 1/s) refuses the excess
// ---------------------------------------------------------------------------------------------
async function ratelimit(redis) {
  const r = {};
  if (autoPipelining) {
    // all in one event-loop turn: the SDK batches them into one /pipeline request
    const sets = Array.from({ length: 8 }, (_, i) => redis.set(k('rl' + i), 'v'));
    const settled = await Promise.allSettled(sets);
    r.results = settled.map((s) =>
      (s.status === 'fulfilled' ? { ok: plain(s.value) } : { error: errorText(s.reason) }));
  } else {
    r.results = [];
    for (let i = 0; i < 8; i++) r.results.push(await settle(() => redis.set(k('rl' + i), 'v')));
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// probe: introspection commands (whatever their answer, it is collected for the test to search)
// ---------------------------------------------------------------------------------------------
async function probe(redis) {
  const r = { probe: [] };
  for (const cmd of JSON.parse(process.env.RG_PROBE)) {
    r.probe.push({ cmd, reply: await settle(() => redis.exec(cmd)) });
  }
  r.after = await redis.set(k('after-probe'), 'ok');
  return r;
}

async function run() {
  const r = { url_scheme: scheme, auto_pipelining: autoPipelining, encoding };
  if (scenario === 'unauthorized') {
    Object.assign(r, await unauthorized());
  } else {
    const redis = client();
    if (scenario === 'main') Object.assign(r, await main(redis));
    else if (scenario === 'ratelimit') Object.assign(r, await ratelimit(redis));
    else if (scenario === 'probe') Object.assign(r, await probe(redis));
    else throw new Error('unknown RG_SCENARIO ' + scenario);
  }
  r.network_errors = networkErrors;
  r.http = exchanges;
  finish(plain(r));
}

run().catch(fail);
