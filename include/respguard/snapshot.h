/*
 * snapshot: everything respguard builds from one configuration, immutable once built.
 *
 * One function (snapshot_build) loads the file, compiles the users, encodes the upstream logins
 * and creates the TLS contexts, and fails before anything is used if any of it is wrong. The
 * worker runs under one current snapshot; a reload builds the next one and swaps it in. Whoever
 * keeps a pointer into a snapshot (a session into its user, a listener into its settings) holds
 * a reference, so a swap never frees anything beneath them. References are taken and dropped on
 * the worker's thread only.
 */
#ifndef RESPGUARD_SNAPSHOT_H
#define RESPGUARD_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>

struct config;
struct acl_user;
struct tlsconn_ctx;

/* The command that logs an upstream connection in (a secret): AUTH [user] pass, or PING when
 * the credential has no password (it still proves the connection answers). */
struct snapshot_login {
    char *cmd;
    size_t len;
};

struct snapshot_pem {
    char *cert, *key; /* NUL-terminated; the key is a secret */
    size_t cert_len, key_len;
};

struct snapshot {
    unsigned refs;
    struct config *cfg;
    struct acl_user *users;           /* compiled from cfg->users, same order */
    size_t user_count;
    /* Per user: the worker's stable number for its name (metrics, rate buckets and anomaly
     * baselines outlive snapshots). Filled by the worker before the snapshot is used. */
    size_t *user_slot;
    /* The upstream logins: [0] the URL's credential, then one per upstream.credentials entry;
     * user_login[i] is the one user i logs in with. */
    struct snapshot_login *logins;
    size_t login_count;
    size_t *user_login;
    struct tlsconn_ctx *upstream_tls;
    const char *upstream_verify_name; /* server_name, or the URL's host (a running worker keeps
                                         the host it started with: worker_verify_name) */
    /* The CA file's bytes (NULL: the system store): connections verified against another CA
     * are replaced on reload. */
    char *upstream_ca;
    size_t upstream_ca_len;
    struct tlsconn_ctx **listener_tls; /* per cfg listener; NULL for plaintext ones */
    /* Per cfg rest listener: its certificate and key as PEM text (checked like a listener's),
     * for the HTTP library, which takes them from memory; NULLs for plaintext ones. */
    struct snapshot_pem *rest_tls;
    double loaded_at;                 /* UTC epoch seconds */
    double load_seconds;              /* how long building it took */
};

/* Build a snapshot from the configuration file at path (refs 1). 0, or -1 with the first error
 * in err ("file:line:column: message" where the error has a place). */
int snapshot_build(const char *path, struct snapshot **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
struct snapshot *snapshot_ref(struct snapshot *s);
/* Drop a reference; the last one frees the snapshot (secrets wiped). NULL is fine. */
void snapshot_unref(struct snapshot *s);

/* The compiled user called name (exact, case-sensitive as in Redis), or NULL. */
const struct acl_user *snapshot_find_user(const struct snapshot *s, const char *name, size_t len);
/* Index of u, a user of s. */
size_t snapshot_user_index(const struct snapshot *s, const struct acl_user *u);
/* The name of upstream login i: "url" or the credential's name. */
const char *snapshot_login_name(const struct snapshot *s, size_t i);
/* Do login ia of a and login ib of b log in with the same command, and verify the upstream
 * against the same CA? (The verify name is the caller's to compare.) */
bool snapshot_same_upstream_login(const struct snapshot *a, size_t ia, const struct snapshot *b, size_t ib);

#endif
