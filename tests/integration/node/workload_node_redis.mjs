// node-redis v5 workload through respguard, RESP2 or RESP3 (RG_RESP).
import { createClient, RESP_TYPES } from 'redis';
import { env, settle, finish, fail, binaryBuffer, withTimeout, step } from './common.mjs';

const P = env.prefix;
const k = (s) => `${P}:${s}`;

function makeClient(name) {
  const c = createClient({
    socket: { host: env.host, port: env.port, reconnectStrategy: false, connectTimeout: 5000 },
    username: env.user,
    password: env.pass,
    RESP: env.resp,
    name,
  });
  c.on('error', (e) => { errors.push(String(e && e.message)); });
  return c;
}
const errors = [];

async function main() {
  const c = makeClient('nr-main');
  await withTimeout(c.connect(), 10000, 'connect');
  const r = {};
  step('handshake');
  r.client_name = await c.clientGetName();
  const info = await c.sendCommand(['CLIENT', 'INFO']);
  r.upstream_resp = Number(/ resp=(\d)/.exec(String(info))[1]);

  // strings
  step('strings');
  await c.set(k('s'), 'v1');
  r.get = await c.get(k('s'));
  await c.set(k('n'), '5');
  r.incrby = await c.incrBy(k('n'), 10);
  r.append = await c.append(k('s'), '-more');
  r.mget = await c.mGet([k('s'), k('missing')]);
  await c.setEx(k('ttl'), 100, 'x');
  const ttl = await c.ttl(k('ttl'));
  r.ttl_ok = ttl > 0 && ttl <= 100;
  r.getdel = await c.getDel(k('ttl'));
  r.exists_after_getdel = await c.exists(k('ttl'));

  // hashes
  step('hashes');
  await c.hSet(k('h'), { f1: 'a', f2: 'b' });
  r.hgetall = await c.hGetAll(k('h'));
  r.hget = await c.hGet(k('h'), 'f2');
  r.hincrby = await c.hIncrBy(k('h'), 'cnt', 3);

  // lists
  step('lists');
  await c.rPush(k('l'), ['a', 'b']);
  await c.lPush(k('l'), 'c');
  r.lrange = await c.lRange(k('l'), 0, -1);
  r.lpop = await c.lPop(k('l'));

  // sets
  step('sets');
  await c.sAdd(k('set'), ['m2', 'm1', 'm3', 'm1']);
  r.smembers = [...(await c.sMembers(k('set')))].map(String).sort();
  r.sismember = Number(await c.sIsMember(k('set'), 'm2'));
  r.scard = await c.sCard(k('set'));

  // sorted sets
  step('sorted sets');
  await c.zAdd(k('z'), [{ score: 1, value: 'a' }, { score: 2.5, value: 'b' }]);
  r.zrange_withscores = (await c.zRangeWithScores(k('z'), 0, -1)).map((e) => [String(e.value), Number(e.score)]);
  r.zscore = Number(await c.zScore(k('z'), 'b'));
  r.zincrby = Number(await c.zIncrBy(k('z'), 2, 'b'));

  // pipeline: 100 commands in one write
  step('pipeline: 100 commands in one write');
  const pl = c.multi();
  for (let i = 0; i < 100; i++) pl.incr(k('pipe'));
  const pres = await pl.execAsPipeline();
  r.pipeline_len = pres.length;
  r.pipeline_last = Number(pres[99]);

  // transaction
  step('transaction');
  r.multi = (await c.multi().set(k('t'), '1').incr(k('t')).exec()).map((x) => (typeof x === 'number' ? x : String(x)));

  // WATCH with a concurrent modification aborts
  step('WATCH with a concurrent modification aborts');
  const other = makeClient('nr-other');
  await withTimeout(other.connect(), 10000, 'connect other');
  await c.watch(k('w'));
  await other.set(k('w'), 'theirs');
  try {
    await c.multi().set(k('w'), 'mine').exec();
    r.watch = 'committed';
  } catch (e) {
    r.watch = e.constructor.name === 'WatchError' ? 'aborted' : 'error: ' + e.message;
  }
  r.watch_value = await c.get(k('w'));

  // a refused command: the error comes back, the connection stays usable
  step('a refused command: the error comes back, the connection stays usable');
  r.refused = await settle(() => c.sendCommand(['CONFIG', 'GET', 'maxmemory']));
  r.after_refused = await c.ping();

  // big and binary values
  step('big and binary values');
  const big = Buffer.alloc(1 << 20, 0x61);
  big.write('start', 0); big.write('end', big.length - 3);
  await c.set(k('big'), big);
  const bc = c.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  const bigBack = await bc.get(k('big'));
  r.big_ok = Buffer.isBuffer(bigBack) && bigBack.equals(big);
  const bin = binaryBuffer(256 * 8);
  await c.set(k('bin'), bin);
  const binBack = await bc.get(k('bin'));
  r.binary_ok = Buffer.isBuffer(binBack) && binBack.equals(bin);

  // pub/sub: a dedicated subscriber connection
  step('pub/sub: a dedicated subscriber connection');
  const sub = c.duplicate();
  sub.on('error', (e) => errors.push(String(e && e.message)));
  await withTimeout(sub.connect(), 10000, 'connect sub');
  const got = [];
  let done;
  const allIn = new Promise((res) => { done = res; });
  const note = (m) => { got.push(m); if (got.length === 3) done(); };
  await sub.subscribe(k('ch'), (msg, ch) => note(`message ${ch === k('ch') ? 'ch' : ch} ${msg}`));
  await sub.pSubscribe(k('pat') + '.*', (msg, ch) => note(`pmessage ${ch === k('pat') + '.x' ? 'pat.x' : ch} ${msg}`));
  r.publish_receivers = [await other.publish(k('ch'), 'm1'), await other.publish(k('pat') + '.x', 'm2'),
    await other.publish(k('ch'), 'm3')];
  await withTimeout(allIn, 10000, 'pub/sub messages');
  r.pubsub = got;
  if (env.resp === 3) {
    // RESP3: a subscribed connection may run any command (replies and pushes interleave)
    r.get_while_subscribed = String(await sub.get(k('s')));
  }
  await sub.unsubscribe(k('ch'));
  await sub.pUnsubscribe(k('pat') + '.*');
  r.after_unsubscribe = String(await sub.get(k('s')));
  step('RESP3 lets the subscribed connection run commands; RESP2 needs unsubscribing first');
  await sub.quit();

  r.errors = errors;
  await other.quit();
  await c.quit();
  finish(r);
}

main().catch(fail);
