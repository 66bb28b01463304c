/*
 * config: one YAML file -> one immutable, validated snapshot (struct config).
 *
 * Pure: reads the file (and the files named by *_file keys) and the environment for ${VAR},
 * never a socket or a loop. Every error is reported as "file:line:column: message" with the
 * position of the offending node. Unknown keys are errors. Secrets (passwords, the upstream URL's
 * password) are kept only in the snapshot and never appear in an error message.
 *
 * Values: "${VAR}" in any value (not in keys) expands from the environment, "$$" is a literal
 * "$". Relative file names (cert_file, ca_file, *_file, ...) are resolved against the directory
 * of the configuration file; the snapshot holds the resolved path. config/example.yaml shows
 * every key.
 */
#ifndef RESPGUARD_CONFIG_H
#define RESPGUARD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "respguard/anomaly.h"

struct acl_user; /* acl.h */

struct config_cidr {
    struct sockaddr_storage net; /* AF_INET or AF_INET6, host bits zeroed */
    unsigned prefix;             /* 0..32 or 0..128 */
};

struct config_cidr_list {
    struct config_cidr *items;
    size_t count;
};

struct config_listener_tls {
    char *cert_file;
    char *key_file;
    char *client_ca_file;  /* NULL: no client certificates requested */
    bool user_from_cert_cn;/* user_from_cert: cn */
};

struct config_listener {
    char *bind;                  /* as written, "host:port" or "[v6]:port" */
    char *host;                  /* parsed numeric address */
    uint16_t port;
    struct sockaddr_storage addr;/* resolved numeric address */
    bool tls_enabled;
    struct config_listener_tls tls;
    struct config_cidr_list allow_from; /* count 0: everyone */
};

struct config_credential {
    char *name;       /* key under upstream.credentials */
    char *username;   /* NULL: AUTH with the password only */
    char *password;   /* secret */
};

/* upstream.pool: how sessions get their upstream connections (pool.h). */
enum config_pool_mode {
    CONFIG_POOL_SESSION,   /* each logged-in client holds one pooled connection (default) */
    CONFIG_POOL_MULTIPLEX, /* clients share connections; a client with connection state pins one */
};

struct config_pool {
    enum config_pool_mode mode;
    uint64_t size;               /* default 64: upstream connections per worker and credential */
    uint64_t min_idle;           /* default 4 (at most size): kept open and logged in, ready */
    uint64_t idle_timeout_ms;    /* default 5m: idle connections above min_idle close; 0: never */
    uint64_t max_lifetime_ms;    /* default 1h: a connection is replaced after this; 0: never */
    uint64_t keepalive_ms;       /* default 30s: idle connections are PINGed; 0: never */
    uint64_t acquire_timeout_ms; /* default 5s: how long a client waits for a connection */
};

struct config_upstream {
    char *url;               /* as written, never logged (contains the password) */
    char *host;              /* from the URL */
    uint16_t port;           /* from the URL, default 6379 */
    char *username;          /* from the URL, NULL when absent (then AUTH <password> only) */
    char *password;          /* from the URL or password_file; NULL: no AUTH upstream */
    char *ca_file;           /* NULL: system trust store */
    char *server_name;       /* NULL: host; SNI and the name verified */
    uint64_t connect_timeout_ms; /* default 5000 */
    struct config_credential *credentials;
    size_t credential_count;
    struct config_pool pool;
};

/* A command rate limit (token bucket, see ratelimit.h). */
struct config_rate_limit {
    bool enabled;  /* false: no limit */
    double rate;   /* commands per second, > 0 when enabled */
    double burst;  /* bucket size, >= 1: commands a quiet client may send at once */
};

/* limits.login_lockout: per source address; off unless the key is given. */
struct config_login_lockout {
    bool enabled;
    uint32_t failures;    /* failed logins that start a lockout, default 10 */
    uint64_t window_ms;   /* ... within this time of the first, default 60000 */
    uint64_t duration_ms; /* how long logins from the source are refused, default 300000 */
};

/* The admin HTTP listener (metrics, health); off unless the admin key is given. */
struct config_admin {
    bool enabled;
    struct config_listener listen;      /* bind/host/port/addr only; default 127.0.0.1:9121 */
    struct config_cidr_list allow_from; /* required for a non-loopback bind */
    uint64_t probe_interval_ms;         /* readiness probe of the upstream, default 5000 */
};

/* A REST listener (rest: list): Upstash's REST API over HTTP(S) (rest.h). */
struct config_rest {
    struct config_listener listen;   /* bind, tls (cert_file and key_file only), allow_from */
    char **cors_origins;             /* cors.allowed_origins: exact origins, or "*" */
    size_t cors_count;
    uint64_t max_request_bytes;      /* default 1 MiB: a larger body is refused with 413 */
    uint64_t max_connections;        /* default 1000: HTTP connections open at once */
    uint64_t request_timeout_ms;     /* default 10s: a request must arrive whole within this of
                                        its first line (a slow client is cut) */
    uint64_t idle_timeout_ms;        /* default 60s: an idle keep-alive connection is closed */
};

struct config_user {
    char *name;
    char *acl;               /* the ACL string as written after ${VAR} expansion (secret!) */
    char *upstream_credential; /* NULL: the URL's credential */
    bool has_expires;
    time_t expires;          /* UTC epoch seconds */
    struct config_cidr_list allow_from;
    const char *file;        /* config file name, for errors found later (acl parsing) */
    int acl_line, acl_column;/* position of the acl value, 1-based: its first character, after
                              * an opening quote (for acl_file: the file name's position) */
    /* This user's anomaly settings, always complete: the anomaly section's per-user settings
     * (config.anomaly.user) with the keys of users.<name>.anomaly applied on top. */
    struct anomaly_user_config anomaly;
    bool has_anomaly_override; /* users.<name>.anomaly was given */
    /* This user's command rate limit: users.<name>.rate_limit, else limits.rate_limit. */
    struct config_rate_limit rate_limit;
    bool has_rate_limit;       /* users.<name>.rate_limit was given */
};

struct config_limits {
    uint64_t max_clients;          /* default 10000 */
    uint64_t max_request_bytes;    /* default 10 MiB */
    uint64_t max_args;             /* default 1048576 */
    uint64_t login_timeout_ms;     /* default 10000 */
    uint64_t client_output_bytes;  /* default 64 MiB: above it, stop reading upstream */
    uint64_t upstream_output_bytes;/* default 64 MiB: above it, stop reading the client */
    uint64_t shutdown_timeout_ms;  /* default 10000: drain bound on SIGTERM */
    struct config_rate_limit rate_limit;      /* every user's, unless overridden; default off */
    struct config_login_lockout login_lockout;/* default off */
};

enum config_log_level { CONFIG_LOG_DEBUG, CONFIG_LOG_INFO, CONFIG_LOG_WARN, CONFIG_LOG_ERROR };

struct config {
    char *path;
    struct config_listener *listeners;
    size_t listener_count;
    struct config_upstream upstream;
    struct config_user *users;
    size_t user_count;
    char **never_by_category;      /* lower-case command names, "cmd" or "cmd|sub" */
    size_t never_count;
    /* Where each never_by_category entry is in the file (line, column, 1-based), for errors found
     * later (a name the command table does not know); NULL for the default list. */
    int (*never_pos)[2];
    struct config_limits limits;
    enum config_log_level log_level;
    bool log_keys;
    /* The anomaly section: anomaly_config_defaults() with the file's keys applied, checked with
     * anomaly_config_check. overrides is NULL when no user has an anomaly key, else user_count
     * entries in user order (users[i].anomaly), owned by the snapshot. hash_seed keeps the
     * default: the caller puts random bytes there before anomaly_new. */
    struct anomaly_config anomaly;
    bool anomaly_enabled;          /* anomaly.enabled, default true */
    struct config_admin admin;
    struct config_rest *rest;      /* the rest: listeners (none unless the key is given) */
    size_t rest_count;
    bool watch;                    /* watch: reload when the file or a file it names changes */
    /* Every file the configuration names (resolved paths: cert_file, acl_file, *_file, ...),
     * in the order they appear; the configuration file itself is config.path. */
    char **files;
    size_t file_count;
};

/* The default guard list (lower case, NULL-terminated). */
extern const char *const config_default_never[];

/* Load and validate path. On success returns 0 and *out (free with config_free). On error
 * returns a negative errno-style code (-EINVAL: invalid configuration; -ENOMEM; the -errno of
 * the configuration file or a *_file that could not be read), leaves *out NULL and writes one
 * "file:line:column: message" line (no trailing newline) into err, cut to errlen. */
int config_load(const char *path, struct config **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Free a snapshot; every string is overwritten with zeros first (secrets). NULL is fine. */
void config_free(struct config *c);

/* Parse "1.2.3.4/8" or "::1/128" (a bare address means /32 or /128). 0 or -EINVAL. */
/* The keys a reload cannot apply (the key table marks them) whose value differs between the
 * running config and the next one: listeners[i].bind, listeners[i].tls, listeners[i] (added or
 * removed), upstream.url (its host or port only), upstream.pool.mode, admin (on or off),
 * admin.bind, admin.probe_interval, rest[i] (added or removed), rest[i].bind, rest[i].tls (on
 * or off), rest[i].max_connections, rest[i].idle_timeout. Writes their names, comma-separated, into out (cut to fit,
 * always terminated when outlen > 0) and returns how many there are. */
size_t config_restart_keys(const struct config *running, const struct config *next, char *out, size_t outlen);

/* Read the whole file at path (regular: refuse anything but a regular file) into a malloc'd,
 * NUL-terminated buffer; more than max bytes is -EFBIG. 0, or a negative errno. */
int config_read_file(const char *path, bool regular, size_t max, char **out, size_t *len);

/* Do two binds name the same address and port ("localhost:6379" and "127.0.0.1:6379" do)? */
bool config_same_address(const struct config_listener *a, const struct config_listener *b);

int config_parse_cidr(const char *s, struct config_cidr *out);
/* Is addr (AF_INET or AF_INET6) inside one of l's ranges? An empty list (or NULL) matches every
 * address, as allow_from means. IPv4 ranges also match IPv4-mapped IPv6 addresses
 * (::ffff:a.b.c.d, as a dual-stack socket reports them), and IPv6 ranges see an IPv4 address as
 * its mapped form. */
bool config_cidr_match(const struct config_cidr_list *l, const struct sockaddr *addr);

/* Parse "5s", "250ms", "2m", "1h" or a bare number of seconds into milliseconds.
 * 0, -EINVAL (syntax) or -ERANGE (overflow). */
int config_parse_duration(const char *s, uint64_t *ms);
/* Parse "10mb", "512kb", "1gb", "100" (bytes); k/m/g are powers of 1024, case-insensitive
 * ("10m", "10b" too). 0, -EINVAL (syntax) or -ERANGE (overflow). */
int config_parse_size(const char *s, uint64_t *bytes);

#endif
