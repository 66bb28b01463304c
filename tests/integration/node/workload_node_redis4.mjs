// node-redis v4 workload through respguard (RESP2 only: v4 has no RESP3). Installed as the npm
// alias "redis4" beside v5 so both majors run against the same proxy.
import { createClient, commandOptions } from 'redis4';
import { env, settle, finish, fail, binaryBuffer, withTimeout, step } from './common.mjs';

const P = env.prefix;
const k = (s) => `${P}:${s}`;
const errors = [];

function makeClient(name) {
  const c = createClient({
    socket: { host: env.host, port: env.port, reconnectStrategy: false, connectTimeout: 5000 },
    username: env.user,
    password: env.pass,
    name,
  });
  c.on('error', (e) => errors.push(String(e && e.message)));
  return c;
}

async function main() {
  const c = makeClient('nr4-main');
  await withTimeout(c.connect(), 10000, 'connect');
  const r = {};
  step('handshake');
  r.client_name = await c.clientGetName();
  step('strings and hashes');
  await c.set(k('s'), 'v1');
  r.get = await c.get(k('s'));
  r.incrby = await c.incrBy(k('n'), 15);
  await c.hSet(k('h'), { f1: 'a', f2: 'b' });
  r.hgetall = await c.hGetAll(k('h'));
  step('pipeline and transaction');
  const pl = c.multi();
  for (let i = 0; i < 100; i++) pl.incr(k('pipe'));
  const pres = await pl.execAsPipeline();
  r.pipeline_last = Number(pres[99]);
  r.multi = (await c.multi().set(k('t'), '1').incr(k('t')).exec()).map(String);
  step('refused command');
  r.refused = await settle(() => c.sendCommand(['FLUSHALL']));
  r.after_refused = await c.ping();
  step('binary');
  const bin = binaryBuffer(256 * 4);
  await c.set(k('bin'), bin);
  const back = await c.get(commandOptions({ returnBuffers: true }), k('bin'));
  r.binary_ok = Buffer.isBuffer(back) && back.equals(bin);
  step('pub/sub');
  const sub = c.duplicate();
  sub.on('error', (e) => errors.push(String(e && e.message)));
  await withTimeout(sub.connect(), 10000, 'connect sub');
  let done;
  const got = new Promise((res) => { done = res; });
  await sub.subscribe(k('ch'), (msg) => done(msg));
  await c.publish(k('ch'), 'hello');
  r.message = await withTimeout(got, 10000, 'message');
  await sub.unsubscribe(k('ch'));
  r.after_unsubscribe = await sub.get(k('s'));
  await sub.quit();
  r.errors = errors;
  await c.quit();
  finish(r);
}

main().catch(fail);
