/*
 * admin: the HTTP listener for operators (admin.bind, loopback by default), separate from the
 * data plane and served by libmicrohttpd in its own thread:
 *
 *   GET /metrics   Prometheus text format: every worker's counters summed (metrics.h), then
 *                  readiness, certificate expiry, config load and build gauges
 *   GET /healthz   200 "ok": the process is alive and serving HTTP
 *   GET /readyz    200 "ready" when the configuration is loaded, respguard is not draining and
 *                  the last upstream probe (probe.h) completed a verified handshake, login and
 *                  PING; else 503 with the reason
 *
 * Anything else is 404 (405 for another method than GET or HEAD). The admin thread reads only
 * immutable configuration, the metric shards' atomics and the status below, which the worker
 * sets under a mutex (once per probe, never per command).
 */
#ifndef RESPGUARD_ADMIN_H
#define RESPGUARD_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct config;
struct metrics;

/* A certificate whose expiry is exported: respguard_cert_expiry_seconds{cert="<name>"}. */
struct admin_cert {
    const char *name; /* "listener 127.0.0.1:6380" (copied) */
    time_t not_after; /* UTC epoch seconds */
};

struct admin_start_info {
    const struct config *cfg;  /* must outlive the admin listener */
    struct metrics *metrics;   /* idem */
    double config_loaded_at;   /* UTC epoch seconds */
    double config_load_seconds;
    const struct admin_cert *certs; /* the listeners' certificates (copied) */
    size_t cert_count;
};

struct admin;

/* Listen on cfg->admin. 0 and *out, or -1 with the reason in err. */
int admin_start(const struct admin_start_info *info, struct admin **out, char *err, size_t errlen);
/* The outcome of the latest upstream probe; reason is NULL on success. upstream_cert_not_after
 * 0: not known (kept from the previous probe). True when readiness changed (or this is the first
 * probe): the caller logs changes, not every probe. */
bool admin_set_upstream(struct admin *a, bool ok, const char *reason, time_t upstream_cert_not_after);
/* Shutting down: /readyz answers 503 from now on. */
void admin_set_draining(struct admin *a);
/* Stop the listener and its thread; NULL is fine. */
void admin_stop(struct admin *a);

#endif
