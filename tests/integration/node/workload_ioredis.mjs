// ioredis 5 workload through respguard (RESP2; ioredis 5 has no RESP3).
import Redis from 'ioredis';
import { env, settle, finish, fail, binaryBuffer, withTimeout, step } from './common.mjs';

const P = env.prefix;
const k = (s) => `${P}:${s}`;
const errors = [];

function makeClient(name) {
  const c = new Redis({
    host: env.host,
    port: env.port,
    username: env.user,
    password: env.pass,
    connectionName: name,
    db: 0,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 5000,
    lazyConnect: true,
  });
  c.on('error', (e) => errors.push(String(e && e.message)));
  return c;
}

async function main() {
  const c = makeClient('io-main');
  await withTimeout(c.connect(), 10000, 'connect');
  const r = {};
  step('handshake');
  r.client_name = await c.client('GETNAME');
  const info = await c.call('CLIENT', 'INFO');
  r.upstream_resp = Number(/ resp=(\d)/.exec(String(info))[1]);

  step('strings');
  await c.set(k('s'), 'v1');
  r.get = await c.get(k('s'));
  await c.set(k('n'), '5');
  r.incrby = await c.incrby(k('n'), 10);
  r.append = await c.append(k('s'), '-more');
  r.mget = await c.mget(k('s'), k('missing'));
  await c.setex(k('ttl'), 100, 'x');
  const ttl = await c.ttl(k('ttl'));
  r.ttl_ok = ttl > 0 && ttl <= 100;
  r.getdel = await c.getdel(k('ttl'));
  r.exists_after_getdel = await c.exists(k('ttl'));

  step('hashes');
  await c.hset(k('h'), { f1: 'a', f2: 'b' });
  r.hgetall = await c.hgetall(k('h'));
  r.hget = await c.hget(k('h'), 'f2');
  r.hincrby = await c.hincrby(k('h'), 'cnt', 3);

  step('lists');
  await c.rpush(k('l'), 'a', 'b');
  await c.lpush(k('l'), 'c');
  r.lrange = await c.lrange(k('l'), 0, -1);
  r.lpop = await c.lpop(k('l'));

  step('sets');
  await c.sadd(k('set'), 'm2', 'm1', 'm3', 'm1');
  r.smembers = (await c.smembers(k('set'))).sort();
  r.sismember = await c.sismember(k('set'), 'm2');
  r.scard = await c.scard(k('set'));

  step('sorted sets');
  await c.zadd(k('z'), 1, 'a', 2.5, 'b');
  const flat = await c.zrange(k('z'), 0, -1, 'WITHSCORES');
  r.zrange_withscores = [];
  for (let i = 0; i < flat.length; i += 2) r.zrange_withscores.push([flat[i], Number(flat[i + 1])]);
  r.zscore = Number(await c.zscore(k('z'), 'b'));
  r.zincrby = Number(await c.zincrby(k('z'), 2, 'b'));

  step('pipeline');
  const pl = c.pipeline();
  for (let i = 0; i < 100; i++) pl.incr(k('pipe'));
  const pres = await pl.exec();
  r.pipeline_len = pres.length;
  r.pipeline_last = pres[99][1];

  step('transaction');
  const mres = await c.multi().set(k('t'), '1').incr(k('t')).exec();
  r.multi = mres.map(([err, v]) => (err ? 'ERR ' + err.message : v));

  step('watch');
  const other = makeClient('io-other');
  await withTimeout(other.connect(), 10000, 'connect other');
  await c.watch(k('w'));
  await other.set(k('w'), 'theirs');
  const wres = await c.multi().set(k('w'), 'mine').exec();
  r.watch = wres === null ? 'aborted' : 'committed';
  r.watch_value = await c.get(k('w'));

  step('refused command');
  r.refused = await settle(() => c.call('CONFIG', 'GET', 'maxmemory'));
  r.after_refused = await c.ping();

  step('big and binary values');
  const big = Buffer.alloc(1 << 20, 0x61);
  big.write('start', 0); big.write('end', big.length - 3);
  await c.set(k('big'), big);
  const bigBack = await c.getBuffer(k('big'));
  r.big_ok = bigBack.equals(big);
  const bin = binaryBuffer(256 * 8);
  await c.set(k('bin'), bin);
  r.binary_ok = (await c.getBuffer(k('bin'))).equals(bin);

  step('pub/sub');
  const sub = makeClient('io-sub');
  await withTimeout(sub.connect(), 10000, 'connect sub');
  const got = [];
  let done;
  const allIn = new Promise((res) => { done = res; });
  const note = (m) => { got.push(m); if (got.length === 3) done(); };
  sub.on('message', (ch, msg) => note(`message ${ch === k('ch') ? 'ch' : ch} ${msg}`));
  sub.on('pmessage', (pat, ch, msg) => note(`pmessage ${ch === k('pat') + '.x' ? 'pat.x' : ch} ${msg}`));
  step('subscribe');
  await sub.subscribe(k('ch'));
  step('psubscribe');
  await sub.psubscribe(k('pat') + '.*');
  step('publish');
  r.publish_receivers = [await other.publish(k('ch'), 'm1'), await other.publish(k('pat') + '.x', 'm2'),
    await other.publish(k('ch'), 'm3')];
  await withTimeout(allIn, 10000, 'pub/sub messages');
  step('unsubscribe');
  r.pubsub = got;
  await sub.unsubscribe(k('ch'));
  await sub.punsubscribe(k('pat') + '.*');
  step('get after unsubscribe');
  r.after_unsubscribe = await sub.get(k('s'));
  await sub.quit();

  step('quit');
  r.errors = errors;
  await other.quit();
  await c.quit();
  finish(r);
}

main().catch(fail);
