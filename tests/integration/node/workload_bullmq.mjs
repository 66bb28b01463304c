// BullMQ 6 (over ioredis 5) through respguard: a queue adds a job, a Worker processes it.
//
// First a plain ioredis client with its default ready check (enableReadyCheck: true, which
// sends INFO and waits for loading:0; on a NOPERM it only warns and skips the check), then
// BullMQ, which also reads INFO (redis_version, maxmemory_policy) on every connection and runs
// its work as Lua scripts (EVALSHA, EVAL when the script is not cached).
//
// Keys: BullMQ's default prefix "bull", so everything is under bull:<queue>:..., the queue
// name made from RG_PREFIX. Result: one JSON line (see test_queue_clients.py).
import { Queue, Worker, QueueEvents } from 'bullmq';
import Redis from 'ioredis';
import { env, finish, fail, withTimeout, step } from './common.mjs';

const queueName = 'q' + env.prefix.replace(/[^A-Za-z0-9]/g, '');
const errors = [];
const warnings = [];
const origWarn = console.warn;
console.warn = (...a) => { warnings.push(a.map(String).join(' ')); };

const connection = {
  host: env.host,
  port: env.port,
  username: env.user,
  password: env.pass,
  maxRetriesPerRequest: null,      // BullMQ requires it for Workers
  retryStrategy: () => null,       // a refusal must not turn into reconnect loops
  connectTimeout: 5000,
};

const t0 = Date.now();
const timings = {};
function mark(name) {
  step(name);
  timings[name] = Date.now() - t0;   // ms since start, for a slow run's report
}

function msg(e) {
  return e && e.message ? e.message : String(e);
}

async function main() {
  const r = { queue: queueName };

  mark('ioredis ready check');
  const io = new Redis({ ...connection, maxRetriesPerRequest: 0, lazyConnect: true });
  io.on('error', (e) => errors.push('ioredis: ' + msg(e)));
  await withTimeout(io.connect(), 10000, 'ioredis connect');
  r.ioredis_status = io.status;           // 'ready' only once the ready check passed
  const probe = `bull:${queueName}:probe`;
  r.ioredis_set = await io.set(probe, 'v');
  r.ioredis_get = await io.get(probe);
  await io.del(probe);
  await io.quit();

  mark('queue');
  const queue = new Queue(queueName, { connection });
  queue.on('error', (e) => errors.push('queue: ' + msg(e)));
  const events = new QueueEvents(queueName, { connection });
  events.on('error', (e) => errors.push('events: ' + msg(e)));

  mark('add');
  try {
    const job = await withTimeout(queue.add('double', { x: 21 }), 10000, 'queue.add');
    r.added = { name: job.name, data: job.data };
  } catch (e) {
    r.add_error = msg(e);
  }

  if (!r.add_error) {
    mark('worker');
    let worker;
    const done = new Promise((resolve, reject) => {
      worker = new Worker(queueName, async (job) => ({ doubled: job.data.x * 2, name: job.name }),
        { connection, concurrency: 1 });
      worker.on('completed', (job, value) => resolve({ name: job.name, returnvalue: value }));
      worker.on('failed', (job, e) => reject(new Error('job failed: ' + msg(e))));
      worker.on('error', (e) => { errors.push('worker: ' + msg(e)); reject(e); });
    });
    try {
      r.completed = await withTimeout(done, 15000, 'job completion');
    } catch (e) {
      r.worker_error = msg(e);
    }
    mark('counts');
    try {
      r.counts = await withTimeout(queue.getJobCounts('completed', 'waiting', 'active', 'failed'),
        5000, 'getJobCounts');
    } catch (e) {
      r.counts_error = msg(e);
    }
    mark('close worker');
    await withTimeout(worker.close(), 10000, 'worker.close').catch((e) => errors.push('close: ' + msg(e)));
  }

  mark('close');
  await withTimeout(events.close(), 10000, 'events.close').catch((e) => errors.push('close: ' + msg(e)));
  mark('events closed');
  await withTimeout(queue.close(), 10000, 'queue.close').catch((e) => errors.push('close: ' + msg(e)));
  console.warn = origWarn;
  r.errors = [...new Set(errors)];
  r.warnings = [...new Set(warnings)];
  mark('end');
  r.timings_ms = timings;
  finish(r);
  // connections a refusal left half-open must not keep node alive
  setTimeout(() => process.exit(0), 100);
}

main().catch(fail);
