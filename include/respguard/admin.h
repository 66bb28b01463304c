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
 * the metric shards' atomics and what the worker gives it under a mutex: the probe's status
 * (once per probe, never per command) and, at start and at each reload, allow_from, the
 * certificates' expiry and the reload outcome.
 */
#ifndef RESPGUARD_ADMIN_H
#define RESPGUARD_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct config_admin;
struct config_cidr_list;
struct metrics;

/* A certificate whose expiry is exported: respguard_cert_expiry_seconds{cert="<name>"}. */
struct admin_cert {
    const char *name; /* "listener 127.0.0.1:6380" (copied) */
    time_t not_after; /* UTC epoch seconds */
};

/* What the admin listener tells about the configuration in use (everything copied). */
struct admin_config_info {
    const struct config_cidr_list *allow_from; /* who may connect; NULL or empty: everyone */
    const struct admin_cert *certs;            /* the listeners' certificates */
    size_t cert_count;
    const char *upstream_name;                 /* "upstream host:port", for the upstream's cert */
    double loaded_at;                          /* UTC epoch seconds */
    double load_seconds;
};

struct admin_start_info {
    const struct config_admin *admin; /* bind (used at start only) */
    struct metrics *metrics;          /* must outlive the admin listener */
    struct admin_config_info config;
};

struct admin;

/* Listen on info->admin's bind. 0 and *out, or -1 with the reason in err. */
int admin_start(const struct admin_start_info *info, struct admin **out, char *err, size_t errlen);
/* A reload succeeded: what the admin listener says and allows from now on. 0, or -1 when out of
 * memory (the previous information stays). */
int admin_set_config(struct admin *a, const struct admin_config_info *info);
/* A reload was tried (ok or not) at this time (UTC epoch seconds). NULL is fine. */
void admin_record_reload(struct admin *a, bool ok, double at);
/* The outcome of the latest upstream probe; reason is NULL on success. upstream_cert_not_after
 * 0: not known (kept from the previous probe). True when readiness changed (or this is the first
 * probe): the caller logs changes, not every probe. */
bool admin_set_upstream(struct admin *a, bool ok, const char *reason, time_t upstream_cert_not_after);
/* Shutting down: /readyz answers 503 from now on. */
void admin_set_draining(struct admin *a);
/* Stop the listener and its thread; NULL is fine. */
void admin_stop(struct admin *a);

#endif
