/*
 * snapshot: one configuration, built into what the worker runs on (the contract is in
 * snapshot.h). Everything that can fail happens here, before the snapshot is used.
 */
#include "respguard/snapshot.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "respguard/acl.h"
#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/resp.h"
#include "respguard/tlsconn.h"

#define CA_FILE_MAX (16u << 20)

static int check_guard(const struct config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->never_count; i++) {
        const char *g = cfg->never_by_category[i];
        if (acl_command_known(g, strlen(g)))
            continue;
        if (cfg->never_pos)
            snprintf(err, errlen, "%s:%d:%d: guard.never_by_category[%zu]: unknown command '%s'", cfg->path,
                     cfg->never_pos[i][0], cfg->never_pos[i][1], i, g);
        else
            snprintf(err, errlen, "%s: guard.never_by_category: unknown command '%s'", cfg->path, g);
        return -EINVAL;
    }
    return 0;
}

static int compile_users(struct snapshot *s, char *err, size_t errlen)
{
    const struct config *cfg = s->cfg;
    size_t n = cfg->user_count ? cfg->user_count : 1;
    s->users = calloc(n, sizeof *s->users);
    s->user_slot = calloc(n, sizeof *s->user_slot);
    if (!s->users || !s->user_slot)
        return -ENOMEM;
    for (size_t i = 0; i < cfg->user_count; i++) {
        const struct config_user *u = &cfg->users[i];
        char why[256];
        size_t off = 0;
        int rc = acl_user_compile(u->name, u->acl, (const char *const *)cfg->never_by_category, cfg->never_count,
                                  &s->users[i], why, sizeof why, &off);
        s->user_count = i + 1;
        if (rc != 0) {
            /* A bare word that is not a rule is most likely a password written without its '>':
             * this message goes to the log (a reload's), so it is not echoed. */
            const char *tok = u->acl + off;
            if (rc == -EINVAL && off < strlen(u->acl) && isalnum((unsigned char)tok[0]))
                snprintf(why, sizeof why, "Error in ACL SETUSER modifier '%c***' (%zu bytes, not shown in full: "
                         "a password needs '>' before it): Syntax error", tok[0], strcspn(tok, " \t"));
            snprintf(err, errlen, "%s:%d:%d: users.%s.acl: %s", u->file ? u->file : cfg->path, u->acl_line,
                     u->acl_column + (int)off, u->name, rc == -EINVAL ? why : strerror(-rc));
            return rc;
        }
    }
    return 0;
}

static int encode_login(struct snapshot_login *out, const char *username, const char *password)
{
    struct resp_arg argv[3];
    size_t argc = 0;
    if (password) {
        argv[argc++] = (struct resp_arg){"AUTH", 4};
        if (username)
            argv[argc++] = (struct resp_arg){username, strlen(username)};
        argv[argc++] = (struct resp_arg){password, strlen(password)};
    } else {
        argv[argc++] = (struct resp_arg){"PING", 4};
    }
    size_t n = resp_encoded_size(argc, argv);
    out->cmd = malloc(n);
    if (!out->cmd)
        return -ENOMEM;
    out->len = resp_encode_command(out->cmd, argc, argv);
    return 0;
}

static int build_logins(struct snapshot *s)
{
    const struct config_upstream *up = &s->cfg->upstream;
    size_t n = 1 + up->credential_count;
    s->logins = calloc(n, sizeof *s->logins);
    s->user_login = calloc(s->cfg->user_count ? s->cfg->user_count : 1, sizeof *s->user_login);
    if (!s->logins || !s->user_login)
        return -ENOMEM;
    s->login_count = n;
    if (encode_login(&s->logins[0], up->username, up->password) != 0)
        return -ENOMEM;
    for (size_t i = 0; i < up->credential_count; i++)
        if (encode_login(&s->logins[i + 1], up->credentials[i].username, up->credentials[i].password) != 0)
            return -ENOMEM;
    for (size_t u = 0; u < s->cfg->user_count; u++) {
        const char *cred = s->cfg->users[u].upstream_credential;
        for (size_t i = 0; cred && i < up->credential_count; i++)
            if (strcmp(up->credentials[i].name, cred) == 0)
                s->user_login[u] = i + 1;
    }
    return 0;
}

/* The CA file's bytes, to tell on reload whether upstream verification changed. */
static int read_ca(struct snapshot *s, char *err, size_t errlen)
{
    const char *path = s->cfg->upstream.ca_file;
    if (!path)
        return 0;
    int rc = config_read_file(path, true, CA_FILE_MAX, &s->upstream_ca, &s->upstream_ca_len);
    if (rc < 0)
        snprintf(err, errlen, "upstream TLS: cannot read %s: %s", path, strerror(-rc));
    return rc;
}

/* The rest listeners' certificates and keys: checked as a listener's are (a pair that does not
 * match, an unreadable file), then kept as text for the HTTP library. */
static int build_rest_tls(struct snapshot *s, char *err, size_t errlen)
{
    const struct config *cfg = s->cfg;
    char why[512];
    s->rest_tls = calloc(cfg->rest_count ? cfg->rest_count : 1, sizeof *s->rest_tls);
    if (!s->rest_tls)
        return -ENOMEM;
    for (size_t i = 0; i < cfg->rest_count; i++) {
        const struct config_listener *l = &cfg->rest[i].listen;
        if (!l->tls_enabled)
            continue;
        struct tlsconn_ctx *check = tlsconn_ctx_new_server(l->tls.cert_file, l->tls.key_file, NULL, why, sizeof why);
        if (!check) {
            snprintf(err, errlen, "rest listener %s: %s", l->bind, why);
            return -EINVAL;
        }
        tlsconn_ctx_free(check);
        struct snapshot_pem *p = &s->rest_tls[i];
        int rc = config_read_file(l->tls.cert_file, true, CA_FILE_MAX, &p->cert, &p->cert_len);
        if (rc == 0)
            rc = config_read_file(l->tls.key_file, true, CA_FILE_MAX, &p->key, &p->key_len);
        if (rc < 0) {
            snprintf(err, errlen, "rest listener %s: cannot read its certificate or key: %s", l->bind, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

static int build_tls(struct snapshot *s, char *err, size_t errlen)
{
    const struct config *cfg = s->cfg;
    char why[512];
    s->upstream_tls = tlsconn_ctx_new_client(cfg->upstream.ca_file, why, sizeof why);
    if (!s->upstream_tls) {
        snprintf(err, errlen, "upstream TLS: %s", why);
        return -EINVAL;
    }
    s->upstream_verify_name = cfg->upstream.server_name ? cfg->upstream.server_name : cfg->upstream.host;
    int rc = read_ca(s, err, errlen);
    if (rc != 0)
        return rc;
    s->listener_tls = calloc(cfg->listener_count ? cfg->listener_count : 1, sizeof *s->listener_tls);
    if (!s->listener_tls)
        return -ENOMEM;
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct config_listener *l = &cfg->listeners[i];
        if (!l->tls_enabled)
            continue;
        s->listener_tls[i] = tlsconn_ctx_new_server(l->tls.cert_file, l->tls.key_file, l->tls.client_ca_file, why,
                                                    sizeof why);
        if (!s->listener_tls[i]) {
            snprintf(err, errlen, "listener %s: %s", l->bind, why);
            return -EINVAL;
        }
    }
    return build_rest_tls(s, err, errlen);
}

static void snapshot_free(struct snapshot *s)
{
    for (size_t i = 0; i < s->user_count; i++)
        acl_user_deinit(&s->users[i]);
    free(s->users);
    free(s->user_slot);
    for (size_t i = 0; s->logins && i < s->login_count; i++) {
        crypto_wipe(s->logins[i].cmd, s->logins[i].len);
        free(s->logins[i].cmd);
    }
    free(s->logins);
    free(s->user_login);
    if (s->upstream_tls)
        tlsconn_ctx_free(s->upstream_tls);
    free(s->upstream_ca);
    for (size_t i = 0; s->listener_tls && i < s->cfg->listener_count; i++)
        if (s->listener_tls[i])
            tlsconn_ctx_free(s->listener_tls[i]);
    free(s->listener_tls);
    for (size_t i = 0; s->rest_tls && i < s->cfg->rest_count; i++) {
        free(s->rest_tls[i].cert);
        if (s->rest_tls[i].key) {
            crypto_wipe(s->rest_tls[i].key, s->rest_tls[i].key_len);
            free(s->rest_tls[i].key);
        }
    }
    free(s->rest_tls);
    config_free(s->cfg);
    free(s);
}

int snapshot_build(const char *path, struct snapshot **out, char *err, size_t errlen)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    *out = NULL;
    err[0] = '\0';
    struct snapshot *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->refs = 1;
    if (config_load(path, &s->cfg, err, errlen) != 0) {
        free(s);
        return -1;
    }
    if (check_guard(s->cfg, err, errlen) != 0 || compile_users(s, err, errlen) != 0 || build_logins(s) != 0 ||
        build_tls(s, err, errlen) != 0) {
        if (!err[0])
            snprintf(err, errlen, "out of memory");
        snapshot_free(s);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s->loaded_at = (double)time(NULL);
    s->load_seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    *out = s;
    return 0;
}

struct snapshot *snapshot_ref(struct snapshot *s)
{
    s->refs++;
    return s;
}

void snapshot_unref(struct snapshot *s)
{
    if (s && --s->refs == 0)
        snapshot_free(s);
}

const struct acl_user *snapshot_find_user(const struct snapshot *s, const char *name, size_t len)
{
    for (size_t i = 0; i < s->user_count; i++) {
        const char *n = s->users[i].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return &s->users[i];
    }
    return NULL;
}

size_t snapshot_user_index(const struct snapshot *s, const struct acl_user *u) { return (size_t)(u - s->users); }

const char *snapshot_login_name(const struct snapshot *s, size_t i)
{
    return i == 0 ? "url" : s->cfg->upstream.credentials[i - 1].name;
}

bool snapshot_same_upstream_login(const struct snapshot *a, size_t ia, const struct snapshot *b, size_t ib)
{
    const struct snapshot_login *la = &a->logins[ia], *lb = &b->logins[ib];
    return la->len == lb->len && memcmp(la->cmd, lb->cmd, la->len) == 0 &&
           a->upstream_ca_len == b->upstream_ca_len &&
           (a->upstream_ca_len == 0 || memcmp(a->upstream_ca, b->upstream_ca, a->upstream_ca_len) == 0) &&
           (a->upstream_ca != NULL) == (b->upstream_ca != NULL);
}
