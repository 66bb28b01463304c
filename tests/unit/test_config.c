/*
 * Unit tests for config.c: good files (the YAML files in data/config), every kind of error
 * with its exact "file:line:column: message", ${VAR} expansion, *_file secrets, addresses,
 * CIDR matching, durations and sizes, and that no error message ever carries a secret.
 *
 * Error cases are tables of {name, yaml, expected "line:column: message"}: each yaml is written
 * to a temporary directory and loaded. "@DATA@" in a case stands for the data directory and
 * "@TMP@" for the temporary one. Runs from tests/unit (the meson workdir) or anywhere else.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "respguard/anomaly.h"
#include "respguard/config.h"

#ifndef TEST_DATA_DIR
#error "TEST_DATA_DIR must name tests/unit/data"
#endif

#define DATA TEST_DATA_DIR "/config"
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static char tmpdir[256];

struct err_case {
    const char *name;
    const char *yaml;
    const char *want; /* "line:column: message", after the file name */
};

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void write_file(char *path, size_t size, const char *name, const char *data, size_t len)
{
    snprintf(path, size, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_text(char *path, size_t size, const char *name, const char *text)
{
    write_file(path, size, name, text, strlen(text));
}

/* Replace @DATA@ and @TMP@. */
static void substitute(char *out, size_t size, const char *in)
{
    size_t k = 0;
    while (*in && k + 1 < size) {
        const char *rep = NULL;
        size_t skip = 0;
        if (strncmp(in, "@DATA@", 6) == 0) {
            rep = DATA;
            skip = 6;
        } else if (strncmp(in, "@TMP@", 5) == 0) {
            rep = tmpdir;
            skip = 5;
        }
        if (rep) {
            size_t n = strlen(rep);
            if (k + n >= size)
                break;
            memcpy(out + k, rep, n);
            k += n;
            in += skip;
        } else {
            out[k++] = *in++;
        }
    }
    out[k] = '\0';
}

/* Load yaml from a temporary file; returns the result and the message. */
static int load_text(const char *yaml, struct config **c, char *err, size_t errlen, char *path,
                     size_t pathlen)
{
    char text[8192];
    substitute(text, sizeof text, yaml);
    write_text(path, pathlen, "t.yaml", text);
    return config_load(path, c, err, errlen);
}

static struct config *load_ok(const char *yaml)
{
    char err[1024], path[512];
    struct config *c = NULL;
    int rc = load_text(yaml, &c, err, sizeof err, path, sizeof path);
    if (rc != 0)
        print_error("unexpected error: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(c);
    assert_string_equal(err, "");
    return c;
}

/* Run a table of error cases; report every mismatch, then fail if there was one. */
static void run_errors(const struct err_case *cases, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        char err[1024], path[512], want[2048], w[1024];
        struct config *c = (struct config *)&c; /* must be reset to NULL */
        int rc = load_text(cases[i].yaml, &c, err, sizeof err, path, sizeof path);
        substitute(w, sizeof w, cases[i].want);
        snprintf(want, sizeof want, "%s:%s", path, w);
        if (rc >= 0 || c != NULL || strcmp(err, want) != 0 || strchr(err, '\n')) {
            print_error("case '%s': rc %d\n  got:  %s\n  want: %s\n", cases[i].name, rc, err,
                        want);
            bad++;
        }
        if (rc == 0)
            config_free(c);
    }
    assert_int_equal(bad, 0);
}

static void assert_anomaly_equal(const struct anomaly_config *a, const struct anomaly_config *b);

static const struct config_user *find_user(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->user_count; i++)
        if (strcmp(c->users[i].name, name) == 0)
            return &c->users[i];
    fail_msg("no user %s", name);
    return NULL;
}

static struct sockaddr_storage sa(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
    }
    return ss;
}

/* ---------------------------------------------------------------------------------------- */
/* Good files                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void test_minimal_file(void **state)
{
    (void)state;
    char err[512];
    struct config *c = NULL;
    assert_int_equal(config_load(DATA "/minimal.yaml", &c, err, sizeof err), 0);
    assert_string_equal(c->path, DATA "/minimal.yaml");

    assert_int_equal(c->listener_count, 1);
    const struct config_listener *l = &c->listeners[0];
    assert_string_equal(l->bind, "127.0.0.1:6379");
    assert_string_equal(l->host, "127.0.0.1");
    assert_int_equal(l->port, 6379);
    assert_false(l->tls_enabled);
    assert_null(l->tls.cert_file);
    assert_int_equal(l->allow_from.count, 0);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&l->addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 6379);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);

    const struct config_upstream *u = &c->upstream;
    assert_string_equal(u->url, "rediss://default:hunter2@redis.example.com");
    assert_string_equal(u->host, "redis.example.com");
    assert_int_equal(u->port, 6379);
    assert_string_equal(u->username, "default");
    assert_string_equal(u->password, "hunter2");
    assert_null(u->ca_file);
    assert_null(u->server_name);
    assert_int_equal(u->connect_timeout_ms, 5000);
    assert_int_equal(u->credential_count, 0);

    assert_int_equal(c->user_count, 1);
    assert_string_equal(c->users[0].name, "web");
    assert_string_equal(c->users[0].acl, "on >pw ~web:* +@read");
    assert_null(c->users[0].upstream_credential);
    assert_false(c->users[0].has_expires);
    assert_string_equal(c->users[0].file, DATA "/minimal.yaml");
    assert_int_equal(c->users[0].acl_line, 8);
    assert_int_equal(c->users[0].acl_column, 11); /* after the quote */

    /* Defaults. */
    size_t n = 0;
    while (config_default_never[n])
        n++;
    assert_int_equal(n, 30);
    assert_int_equal(c->never_count, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(c->never_by_category[i], config_default_never[i]);
    assert_int_equal(c->limits.max_clients, 10000);
    assert_int_equal(c->limits.max_request_bytes, 10 << 20);
    assert_int_equal(c->limits.max_args, 1048576);
    assert_int_equal(c->limits.login_timeout_ms, 10000);
    assert_int_equal(c->limits.client_output_bytes, 64 << 20);
    assert_int_equal(c->limits.upstream_output_bytes, 64 << 20);
    assert_int_equal(c->limits.shutdown_timeout_ms, 10000);
    assert_int_equal(c->log_level, CONFIG_LOG_INFO);
    assert_false(c->log_keys);
    config_free(c);
}

static void test_full_file(void **state)
{
    (void)state;
    char err[512];
    struct config *c = NULL;
    int rc = config_load(DATA "/full.yaml", &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);

    assert_int_equal(c->listener_count, 4);
    const struct config_listener *l = c->listeners;
    assert_string_equal(l[0].bind, "localhost:6379");
    assert_string_equal(l[0].host, "127.0.0.1");
    assert_false(l[0].tls_enabled);

    assert_string_equal(l[1].bind, "[::1]:6380");
    assert_string_equal(l[1].host, "::1");
    assert_int_equal(l[1].port, 6380);
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&l[1].addr;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 6380);
    assert_true(IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));
    assert_int_equal(l[1].allow_from.count, 2);

    assert_string_equal(l[2].host, "0.0.0.0");
    assert_true(l[2].tls_enabled);
    assert_string_equal(l[2].tls.cert_file, DATA "/tls/server.crt"); /* relative to the file */
    assert_string_equal(l[2].tls.key_file, "/etc/respguard/server.key");
    assert_string_equal(l[2].tls.client_ca_file, DATA "/tls/clients-ca.crt");
    assert_true(l[2].tls.user_from_cert_cn);
    assert_int_equal(l[2].allow_from.count, 3);
    /* 192.168.1.77/24 keeps the network only. */
    struct sockaddr_storage a = sa("192.168.1.200");
    assert_true(config_cidr_match(&l[2].allow_from, (struct sockaddr *)&a));
    a = sa("192.168.2.1");
    assert_false(config_cidr_match(&l[2].allow_from, (struct sockaddr *)&a));
    a = sa("2001:db8:1::1");
    assert_true(config_cidr_match(&l[2].allow_from, (struct sockaddr *)&a));

    assert_string_equal(l[3].host, "::");
    assert_true(l[3].tls_enabled);
    assert_null(l[3].tls.client_ca_file);
    assert_false(l[3].tls.user_from_cert_cn);

    const struct config_upstream *u = &c->upstream;
    assert_string_equal(u->url, "rediss://app%40corp:up-secret@[2001:db8::5]:6390/0");
    assert_string_equal(u->host, "2001:db8::5");
    assert_int_equal(u->port, 6390);
    assert_string_equal(u->username, "app@corp");
    assert_string_equal(u->password, "up-secret");
    assert_string_equal(u->ca_file, DATA "/tls/upstream-ca.pem");
    assert_string_equal(u->server_name, "eu1-example.upstash.io");
    assert_int_equal(u->connect_timeout_ms, 1500);
    assert_int_equal(u->credential_count, 2);
    assert_string_equal(u->credentials[0].name, "readonly");
    assert_string_equal(u->credentials[0].username, "default_ro");
    assert_string_equal(u->credentials[0].password, "ro-secret");
    assert_string_equal(u->credentials[1].name, "fromfile");
    assert_null(u->credentials[1].username);
    assert_string_equal(u->credentials[1].password, "pa$$word-from-file"); /* file: no expansion */

    assert_int_equal(c->user_count, 3);
    const struct config_user *web = find_user(c, "web");
    assert_string_equal(web->acl, "on >web-secret ~web:* &web:* +@read +@write -@dangerous");
    assert_string_equal(web->upstream_credential, "readonly");
    assert_true(web->has_expires);
    assert_int_equal(web->expires, 1814313600); /* date -d 2027-06-30T00:00:00Z +%s */
    assert_int_equal(web->allow_from.count, 1);
    assert_int_equal(web->acl_line, 31);
    assert_int_equal(web->acl_column, 11);
    const struct config_user *ops = find_user(c, "ops");
    assert_string_equal(ops->acl, "on >opspass ~* &* +@all +flushdb"); /* \r\n stripped */
    assert_int_equal(ops->acl_line, 36);
    assert_int_equal(ops->acl_column, 15);
    const struct config_user *batch = find_user(c, "svc.batch-1");
    assert_string_equal(batch->acl, "on nopass ~batch:* +@all");
    assert_string_equal(batch->upstream_credential, "fromfile");
    assert_int_equal(batch->acl_line, 38);
    assert_int_equal(batch->acl_column, 11); /* after the single quote */

    assert_int_equal(c->never_count, 3);
    assert_string_equal(c->never_by_category[0], "flushall");
    assert_string_equal(c->never_by_category[1], "config");
    assert_string_equal(c->never_by_category[2], "client|kill");

    assert_int_equal(c->limits.max_clients, 500);
    assert_int_equal(c->limits.max_request_bytes, 512 * 1024);
    assert_int_equal(c->limits.max_args, 1024);
    assert_int_equal(c->limits.login_timeout_ms, 2000);
    assert_int_equal(c->limits.client_output_bytes, 1ull << 30);
    assert_int_equal(c->limits.upstream_output_bytes, 32 << 20);
    assert_int_equal(c->limits.shutdown_timeout_ms, 60000);
    assert_int_equal(c->log_level, CONFIG_LOG_DEBUG);
    assert_true(c->log_keys);
    config_free(c);
}

/* The shipped example must load (with its variables set). */
static void test_example_file(void **state)
{
    (void)state;
    char err[512], path[512];
    struct config *c = NULL;
    snprintf(path, sizeof path, "%s", TEST_DATA_DIR "/../../../config/example.yaml");
    struct stat st;
    if (stat(path, &st) != 0)
        skip();
    int rc = config_load(path, &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_true(c->listener_count >= 2);
    /* Its anomaly section shows the defaults; web has an override. */
    struct anomaly_config def;
    anomaly_config_defaults(&def);
    assert_true(c->anomaly_enabled);
    assert_anomaly_equal(&c->anomaly, &def);
    assert_non_null(c->anomaly.overrides);
    assert_true(c->users[0].has_anomaly_override);
    assert_true(c->anomaly.overrides[0].min_rate == 200);
    assert_int_equal(c->anomaly.overrides[0].sustain_s, 30);
    assert_false(c->users[1].has_anomaly_override);
    config_free(c);
}

static void test_env_expansion(void **state)
{
    (void)state;
    struct config *c = load_ok(
        "listeners:\n"
        "  - bind: 127.0.0.1:${RG_TEST_PORT}\n"
        "upstream:\n"
        "  url: rediss://:${RG_TEST_UPSTREAM_PASSWORD}${RG_TEST_UPSTREAM_PASSWORD}@h\n"
        "users:\n"
        "  web:\n"
        "    acl: \"on >a$$b >c$d >e$ >$$${RG_TEST_PORT}$${x} >${RG_TEST_EMPTY}|\"\n"
        "limits:\n"
        "  max_clients: ${RG_TEST_PORT}\n");
    assert_int_equal(c->listeners[0].port, 7001);
    assert_string_equal(c->upstream.password, "up-secretup-secret");
    assert_null(c->upstream.username);
    assert_string_equal(c->users[0].acl, "on >a$b >c$d >e$ >$7001${x} >|");
    assert_int_equal(c->limits.max_clients, 7001);
    /* Keys are not expanded: a user can be named like a variable. */
    config_free(c);
    c = load_ok("listeners: [{bind: 127.0.0.1:1}]\n"
                "upstream: {url: rediss://h}\n"
                "users: {\"${RG_TEST_PORT}\": {acl: on}}\n");
    assert_string_equal(c->users[0].name, "${RG_TEST_PORT}");
    config_free(c);
}

static void test_secret_files(void **state)
{
    (void)state;
    static const struct {
        const char *content;
        size_t len;
        const char *want;
    } cases[] = {
        {"secret\n", 7, "secret"},      {"secret\r\n", 8, "secret"},
        {"secret", 6, "secret"},        {"secret\n\n", 8, "secret\n"},
        {"secret\r", 7, "secret\r"},    {" sp ace \n", 9, " sp ace "},
        {"line1\nline2\n", 12, "line1\nline2"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char path[512];
        write_file(path, sizeof path, "pw.txt", cases[i].content, cases[i].len);
        /* Relative to the configuration file's directory, not to the working directory. */
        struct config *c = load_ok("listeners: [{bind: 127.0.0.1:1}]\n"
                                   "upstream:\n"
                                   "  url: rediss://default@h\n"
                                   "  password_file: pw.txt\n"
                                   "  credentials:\n"
                                   "    a: {password_file: \"@TMP@/pw.txt\"}\n"
                                   "users:\n"
                                   "  web: {acl_file: ./pw.txt}\n");
        assert_string_equal(c->upstream.username, "default");
        assert_string_equal(c->upstream.password, cases[i].want);
        assert_string_equal(c->upstream.credentials[0].password, cases[i].want);
        assert_string_equal(c->users[0].acl, cases[i].want);
        assert_int_equal(c->users[0].acl_line, 8);
        assert_int_equal(c->users[0].acl_column, 19);
        config_free(c);
    }
}

/* A secret file of exactly the 1 MiB cap is read whole. */
static void test_secret_file_at_cap(void **state)
{
    (void)state;
    char path[512];
    size_t n = 1u << 20;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'k', n);
    write_file(path, sizeof path, "cap.txt", big, n);
    struct config *c = load_ok("listeners: [{bind: 127.0.0.1:1}]\n"
                               "upstream: {url: rediss://h}\n"
                               "users: {web: {acl_file: cap.txt}}\n");
    assert_int_equal(strlen(c->users[0].acl), n);
    assert_memory_equal(c->users[0].acl, big, n);
    free(big);
    config_free(c);
}

static void test_ipv6_binds(void **state)
{
    (void)state;
    struct config *c = load_ok("listeners:\n"
                               "  - bind: \"[::1]:6379\"\n"
                               "  - bind: \"[::ffff:127.0.0.2]:6379\"\n"
                               "  - bind: \"[2001:DB8::1]:443\"\n"
                               "    tls: {cert_file: c, key_file: k}\n"
                               "  - bind: 127.1.2.3:65535\n"
                               "upstream: {url: \"rediss://[::1]\"}\n"
                               "users: {web: {acl: on}}\n");
    assert_int_equal(c->listener_count, 4);
    assert_string_equal(c->listeners[0].host, "::1");
    assert_string_equal(c->listeners[1].host, "::ffff:127.0.0.2");
    assert_false(c->listeners[1].tls_enabled);
    assert_string_equal(c->listeners[2].host, "2001:db8::1");
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&c->listeners[2].addr;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 443);
    assert_int_equal(s6->sin6_addr.s6_addr[15], 1);
    assert_int_equal(c->listeners[3].port, 65535);
    assert_string_equal(c->upstream.host, "::1");
    assert_int_equal(c->upstream.port, 6379);
    assert_null(c->upstream.password);
    config_free(c);
}

static void test_upstream_urls(void **state)
{
    (void)state;
    static const struct {
        const char *url, *host, *user, *pass;
        uint16_t port;
    } cases[] = {
        {"rediss://h", "h", NULL, NULL, 6379},
        {"rediss://h/", "h", NULL, NULL, 6379},
        {"rediss://h:1/0", "h", NULL, NULL, 1},
        {"REDISS://H.example.COM:6380", "H.example.COM", NULL, NULL, 6380},
        {"rediss://:tok@10.0.0.1", "10.0.0.1", NULL, "tok", 6379},
        {"rediss://default:p%3Aa%2Fs%40s@h", "h", "default", "p:a/s@s", 6379},
        {"rediss://u:p@ss:w/rd@h", "h", "u", "p@ss:w/rd", 6379}, /* last @ ends the userinfo */
        {"rediss://u%20x:p@h", "h", "u x", "p", 6379},
        {"rediss://:@h", "h", NULL, NULL, 6379},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char yaml[512];
        snprintf(yaml, sizeof yaml,
                 "listeners: [{bind: 127.0.0.1:1}]\nupstream: {url: \"%s\"}\nusers: {w: {acl: "
                 "on}}\n",
                 cases[i].url);
        struct config *c = load_ok(yaml);
        assert_string_equal(c->upstream.host, cases[i].host);
        assert_int_equal(c->upstream.port, cases[i].port);
        if (cases[i].user)
            assert_string_equal(c->upstream.username, cases[i].user);
        else
            assert_null(c->upstream.username);
        if (cases[i].pass)
            assert_string_equal(c->upstream.password, cases[i].pass);
        else
            assert_null(c->upstream.password);
        config_free(c);
    }
}

static void test_guard_and_log(void **state)
{
    (void)state;
    struct config *c = load_ok("listeners: [{bind: 127.0.0.1:1}]\n"
                               "upstream: {url: rediss://h}\n"
                               "users: {w: {acl: on}}\n"
                               "guard: {never_by_category: []}\n"
                               "log: {level: warn, keys: False}\n");
    assert_int_equal(c->never_count, 0); /* explicitly empty: nothing guarded */
    assert_int_equal(c->users[0].acl_line, 3); /* a plain scalar: its first character */
    assert_int_equal(c->users[0].acl_column, 18);
    assert_int_equal(c->log_level, CONFIG_LOG_WARN);
    assert_false(c->log_keys);
    config_free(c);
    c = load_ok("listeners: [{bind: 127.0.0.1:1}]\n"
                "upstream: {url: rediss://h}\n"
                "users: {w: {acl: on}}\n"
                "guard: {}\n"
                "log: {level: error, keys: TRUE}\n");
    assert_int_equal(c->never_count, 30); /* guard without the key: the defaults */
    assert_int_equal(c->log_level, CONFIG_LOG_ERROR);
    assert_true(c->log_keys);
    config_free(c);
}

/* ---------------------------------------------------------------------------------------- */
/* anomaly                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void assert_user_anomaly_equal(const struct anomaly_user_config *a,
                                      const struct anomaly_user_config *b)
{
    assert_int_equal(a->disabled, b->disabled);
    assert_true(a->min_rate == b->min_rate);
    assert_true(a->factor == b->factor);
    assert_true(a->k == b->k);
    assert_int_equal(a->sustain_s, b->sustain_s);
    assert_int_equal(a->denial_burst, b->denial_burst);
    assert_int_equal(a->connection_surge_min, b->connection_surge_min);
    assert_true(a->connection_surge_factor == b->connection_surge_factor);
}

static void assert_anomaly_equal(const struct anomaly_config *a, const struct anomaly_config *b)
{
    assert_int_equal(a->half_life_s, b->half_life_s);
    assert_int_equal(a->active_half_life_s, b->active_half_life_s);
    assert_int_equal(a->warmup_s, b->warmup_s);
    assert_int_equal(a->recovery_s, b->recovery_s);
    assert_true(a->recovery_ratio == b->recovery_ratio);
    assert_int_equal(a->categories, b->categories);
    assert_user_anomaly_equal(&a->user, &b->user);
    assert_int_equal(a->denial_burst_source, b->denial_burst_source);
    assert_int_equal(a->auth_failure_burst, b->auth_failure_burst);
    assert_int_equal(a->connection_surge_min_source, b->connection_surge_min_source);
    assert_true(a->connection_surge_factor_source == b->connection_surge_factor_source);
    assert_int_equal(a->source_table_size, b->source_table_size);
    assert_true(a->hash_seed == b->hash_seed);
}

/* No anomaly section (or an empty one): the detector's defaults, enabled, no overrides. */
static void test_anomaly_defaults(void **state)
{
    (void)state;
    struct anomaly_config def;
    anomaly_config_defaults(&def);
    static const char *const files[] = {
        "listeners: [{bind: 127.0.0.1:1}]\nupstream: {url: rediss://h}\n"
        "users: {w: {acl: on}, r: {acl: on}}\n",
        "listeners: [{bind: 127.0.0.1:1}]\nupstream: {url: rediss://h}\n"
        "users: {w: {acl: on}, r: {acl: on}}\nanomaly: {}\n",
    };
    for (size_t f = 0; f < ARRAY_SIZE(files); f++) {
        struct config *c = load_ok(files[f]);
        assert_true(c->anomaly_enabled);
        assert_anomaly_equal(&c->anomaly, &def);
        assert_null(c->anomaly.overrides);
        assert_int_equal(c->user_count, 2);
        for (size_t i = 0; i < c->user_count; i++) {
            assert_false(c->users[i].has_anomaly_override);
            assert_user_anomaly_equal(&c->users[i].anomaly, &def.user);
        }
        config_free(c);
    }
    /* The shipped minimal file too. */
    char err[512];
    struct config *c = NULL;
    assert_int_equal(config_load(DATA "/minimal.yaml", &c, err, sizeof err), 0);
    assert_true(c->anomaly_enabled);
    assert_anomaly_equal(&c->anomaly, &def);
    assert_null(c->anomaly.overrides);
    config_free(c);
}

/* Every key, the section after the users, overrides in user order. */
static void test_anomaly_file(void **state)
{
    (void)state;
    char err[512];
    struct config *c = NULL;
    int rc = config_load(DATA "/anomaly.yaml", &c, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);

    struct anomaly_config want;
    anomaly_config_defaults(&want);
    want.half_life_s = 900;
    want.warmup_s = 3600;
    want.user.sustain_s = 20;
    want.recovery_s = 45;
    want.user.min_rate = 12.75;
    want.user.factor = 4;
    want.user.k = 3.5;
    want.user.denial_burst = 40;
    want.denial_burst_source = 40;
    want.auth_failure_burst = 0;
    want.user.connection_surge_min = 200;
    want.connection_surge_min_source = 200;
    want.user.connection_surge_factor = 12;
    want.connection_surge_factor_source = 12;
    assert_false(c->anomaly_enabled);
    assert_anomaly_equal(&c->anomaly, &want);

    assert_int_equal(c->user_count, 3);
    assert_string_equal(c->users[0].name, "web");
    assert_string_equal(c->users[1].name, "batch");
    assert_string_equal(c->users[2].name, "ro");

    struct anomaly_user_config web = {
        .disabled = false, .min_rate = 0.5, .factor = 2.5, .k = 6, .sustain_s = 60,
        .denial_burst = 7, .connection_surge_min = 8, .connection_surge_factor = 1.5};
    struct anomaly_user_config ro = want.user; /* the section's values, then its two keys */
    ro.disabled = true;
    ro.min_rate = 1000;

    assert_true(c->users[0].has_anomaly_override);
    assert_false(c->users[1].has_anomaly_override);
    assert_true(c->users[2].has_anomaly_override);
    assert_user_anomaly_equal(&c->users[0].anomaly, &web);
    assert_user_anomaly_equal(&c->users[1].anomaly, &want.user);
    assert_user_anomaly_equal(&c->users[2].anomaly, &ro);

    const struct anomaly_user_config *o = c->anomaly.overrides;
    assert_non_null(o);
    assert_user_anomaly_equal(&o[0], &web);
    assert_user_anomaly_equal(&o[1], &want.user);
    assert_user_anomaly_equal(&o[2], &ro);
    assert_int_equal(anomaly_config_check(&c->anomaly, c->user_count, err, sizeof err), 0);
    /* The snapshot is directly usable by the detector. */
    struct anomaly *d = NULL;
    assert_int_equal(anomaly_new(&c->anomaly, c->user_count, &d), 0);
    anomaly_free(d);
    config_free(c);
}

/* One override among several users, section before the users, value forms. */
static void test_anomaly_overrides(void **state)
{
    (void)state;
    struct anomaly_config def;
    anomaly_config_defaults(&def);
    struct config *c = load_ok("listeners: [{bind: 127.0.0.1:1}]\n"
                               "upstream: {url: rediss://h}\n"
                               "anomaly: {enabled: yes, min_rate: \"7\", half_life: 600,\n"
                               "          k: 0, factor: 1.0, sustain: 1s, warmup: 0s}\n"
                               "users:\n"
                               "  a: {acl: on}\n"
                               "  b: {acl: on}\n"
                               "  c: {acl: on, anomaly: {k: 2, denial_burst: 0}}\n"
                               "  d: {acl: on, anomaly: {}}\n");
    assert_true(c->anomaly_enabled);
    assert_int_equal(c->anomaly.half_life_s, 600);
    assert_int_equal(c->anomaly.warmup_s, 0);
    assert_true(c->anomaly.user.min_rate == 7.0);
    assert_true(c->anomaly.user.k == 0.0);
    assert_true(c->anomaly.user.factor == 1.0);
    assert_int_equal(c->anomaly.user.sustain_s, 1);
    /* Keys not given keep their defaults, the per-source values included. */
    assert_int_equal(c->anomaly.user.denial_burst, def.user.denial_burst);
    assert_int_equal(c->anomaly.denial_burst_source, def.denial_burst_source);
    assert_int_equal(c->anomaly.recovery_s, def.recovery_s);

    const struct anomaly_user_config *o = c->anomaly.overrides;
    assert_non_null(o);
    for (size_t i = 0; i < 4; i++) {
        struct anomaly_user_config w = c->anomaly.user;
        if (i == 2) {
            w.k = 2;
            w.denial_burst = 0;
        }
        assert_user_anomaly_equal(&o[i], &w);
        assert_user_anomaly_equal(&c->users[i].anomaly, &w);
        assert_int_equal(c->users[i].has_anomaly_override, i >= 2);
    }
    config_free(c);

    /* Large but representable values pass the loader (ranges are the detector's). */
    c = load_ok("listeners: [{bind: 127.0.0.1:1}]\nupstream: {url: rediss://h}\n"
                "users: {w: {acl: on}}\n"
                "anomaly: {denial_burst: 4294967295, auth_failure_burst: 4294967295,\n"
                "          connection_surge_min: 4294967295, half_life: 720h,\n"
                "          min_rate: 1000000000, factor: 1000000}\n");
    assert_int_equal(c->anomaly.user.denial_burst, UINT32_MAX);
    assert_int_equal(c->anomaly.denial_burst_source, UINT32_MAX);
    assert_int_equal(c->anomaly.auth_failure_burst, UINT32_MAX);
    assert_int_equal(c->anomaly.connection_surge_min_source, UINT32_MAX);
    assert_int_equal(c->anomaly.half_life_s, 720 * 3600);
    assert_null(c->anomaly.overrides);
    config_free(c);
}

#define L "listeners:\n  - bind: 127.0.0.1:6379\n" /* lines 1-2 */
#define UP "upstream:\n  url: rediss://h\n"       /* 2 lines */
#define US "users:\n  web:\n    acl: \"on\"\n"   /* 3 lines */

static void test_errors_anomaly(void **state)
{
    (void)state;
#define NUM "expected a number that is not negative, like 20 or 0.5"
#define SECS "expected a duration in whole seconds, like 30s, 10m or 1h"
#define U32 "expected a whole number from 0 to 4294967295"
    static const struct err_case cases[] = {
        /* The section: form and type of each key. */
        {"anomaly scalar", "anomaly: on\n",
         "1:10: anomaly: expected a mapping, found a single value"},
        {"anomaly list", "anomaly: [a]\n", "1:10: anomaly: expected a mapping, found a list"},
        {"anomaly empty value", "anomaly:\n",
         "1:9: anomaly: expected a mapping, found a single value"},
        {"unknown key", "anomaly:\n  threshold: 5\n", "2:3: unknown key 'threshold' in anomaly"},
        {"source key is not a key", "anomaly:\n  denial_burst_source: 5\n",
         "2:3: unknown key 'denial_burst_source' in anomaly"},
        {"disabled is per user only", "anomaly:\n  disabled: yes\n",
         "2:3: unknown key 'disabled' in anomaly"},
        {"duplicate key", "anomaly: {k: 1, k: 2}\n", "1:17: duplicate key 'k' in anomaly"},
        {"enabled maybe", "anomaly:\n  enabled: maybe\n",
         "2:12: anomaly.enabled: expected yes, no, true or false"},
        {"enabled list", "anomaly:\n  enabled: [yes]\n",
         "2:12: anomaly.enabled: expected a single value, found a list"},
        {"half_life ms", "anomaly:\n  half_life: 1500ms\n", "2:14: anomaly.half_life: " SECS},
        {"half_life negative", "anomaly:\n  half_life: -5m\n", "2:14: anomaly.half_life: " SECS},
        {"half_life unit", "anomaly:\n  half_life: 1d\n", "2:14: anomaly.half_life: " SECS},
        {"half_life fraction", "anomaly:\n  half_life: 1.5m\n",
         "2:14: anomaly.half_life: " SECS},
        {"half_life too big for 32 bits", "anomaly:\n  half_life: 4294967296s\n",
         "2:14: anomaly.half_life: " SECS},
        {"half_life null", "anomaly:\n  half_life: ~\n", "2:14: anomaly.half_life: missing value"},
        {"warmup mapping", "anomaly:\n  warmup: {m: 10}\n",
         "2:11: anomaly.warmup: expected a single value, found a mapping"},
        {"sustain text", "anomaly:\n  sustain: ten\n", "2:12: anomaly.sustain: " SECS},
        {"recovery negative", "anomaly:\n  recovery: -30s\n", "2:13: anomaly.recovery: " SECS},
        {"min_rate negative", "anomaly:\n  min_rate: -1\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate plus", "anomaly:\n  min_rate: +1\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate exponent", "anomaly:\n  min_rate: 1e3\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate inf", "anomaly:\n  min_rate: .inf\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate nan", "anomaly:\n  min_rate: nan\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate hex", "anomaly:\n  min_rate: 0x10\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate leading dot", "anomaly:\n  min_rate: .5\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate trailing dot", "anomaly:\n  min_rate: \"5.\"\n",
         "2:13: anomaly.min_rate: " NUM},
        {"min_rate unit", "anomaly:\n  min_rate: 20/s\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate space", "anomaly:\n  min_rate: \" 20\"\n", "2:13: anomaly.min_rate: " NUM},
        {"min_rate list", "anomaly:\n  min_rate: [20]\n",
         "2:13: anomaly.min_rate: expected a single value, found a list"},
        {"factor text", "anomaly:\n  factor: three\n", "2:11: anomaly.factor: " NUM},
        {"k negative", "anomaly:\n  k: -4\n", "2:6: anomaly.k: " NUM},
        {"denial_burst negative", "anomaly:\n  denial_burst: -1\n",
         "2:17: anomaly.denial_burst: " U32},
        {"denial_burst fraction", "anomaly:\n  denial_burst: 1.5\n",
         "2:17: anomaly.denial_burst: " U32},
        {"auth_failure_burst overflow", "anomaly:\n  auth_failure_burst: 4294967296\n",
         "2:23: anomaly.auth_failure_burst: " U32},
        {"connection_surge_min text", "anomaly:\n  connection_surge_min: many\n",
         "2:25: anomaly.connection_surge_min: " U32},
        {"connection_surge_factor negative", "anomaly:\n  connection_surge_factor: -10\n",
         "2:28: anomaly.connection_surge_factor: " NUM},
        {"env unset", "anomaly:\n  k: ${RG_TEST_UNSET}\n",
         "2:6: environment variable RG_TEST_UNSET is not set"},

        /* users.<name>.anomaly */
        {"user anomaly scalar", L UP US "    anomaly: off\n",
         "8:14: users.web.anomaly: expected a mapping, found a single value"},
        {"user unknown key", L UP US "    anomaly:\n      half_life: 5m\n",
         "9:7: unknown key 'half_life' in users.web.anomaly"},
        {"user enabled is not a key", L UP US "    anomaly: {enabled: no}\n",
         "8:15: unknown key 'enabled' in users.web.anomaly"},
        {"user duplicate anomaly", L UP US "    anomaly: {}\n    anomaly: {}\n",
         "9:5: duplicate key 'anomaly' in users.web"},
        {"user disabled", L UP US "    anomaly:\n      disabled: 2\n",
         "9:17: users.web.anomaly.disabled: expected yes, no, true or false"},
        {"user min_rate negative", L UP US "    anomaly:\n      min_rate: -0.5\n",
         "9:17: users.web.anomaly.min_rate: " NUM},
        {"user factor list", L UP US "    anomaly:\n      factor: [2]\n",
         "9:15: users.web.anomaly.factor: expected a single value, found a list"},
        {"user k text", L UP US "    anomaly:\n      k: x\n", "9:10: users.web.anomaly.k: " NUM},
        {"user sustain ms", L UP US "    anomaly:\n      sustain: 100ms\n",
         "9:16: users.web.anomaly.sustain: " SECS},
        {"user denial_burst negative", L UP US "    anomaly:\n      denial_burst: -3\n",
         "9:21: users.web.anomaly.denial_burst: " U32},
        {"user connection_surge_min fraction",
         L UP US "    anomaly:\n      connection_surge_min: 0.5\n",
         "9:29: users.web.anomaly.connection_surge_min: " U32},
        {"user connection_surge_factor text",
         L UP US "    anomaly:\n      connection_surge_factor: lots\n",
         "9:32: users.web.anomaly.connection_surge_factor: " NUM},

        /* anomaly_config_check, after the whole file: at the anomaly key. */
        {"check half_life 0", L UP US "anomaly:\n  half_life: 0s\n",
         "8:1: anomaly: half_life_s must be from 1 to 2592000"},
        {"check half_life above 30 days", L UP US "anomaly:\n  half_life: 721h\n",
         "8:1: anomaly: half_life_s must be from 1 to 2592000"},
        {"check warmup above 30 days", L UP US "anomaly:\n  warmup: 2592001\n",
         "8:1: anomaly: warmup_s must be at most 2592000"},
        {"check recovery 0", L UP US "anomaly:\n  recovery: 0\n",
         "8:1: anomaly: recovery_s must be from 1 to 2592000"},
        {"check sustain 0", L UP US "anomaly:\n  sustain: 0s\n",
         "8:1: anomaly: user.sustain_s must be from 1 to 2592000"},
        {"check factor below 1", L UP US "anomaly:\n  factor: 0.5\n",
         "8:1: anomaly: user.factor must be a number from 1 to 1e6"},
        {"check min_rate above 1e9", L UP US "anomaly:\n  min_rate: 1000000000.5\n",
         "8:1: anomaly: user.min_rate must be a number from 0 to 1e9"},
        {"check k above 1e6", L UP US "anomaly:\n  k: 1000001\n",
         "8:1: anomaly: user.k must be a number from 0 to 1e6"},
        {"check connection_surge_factor below 1", L UP US "anomaly:\n"
         "  connection_surge_factor: 0\n",
         "8:1: anomaly: connection_surge_factor_source must be a number from 1 to 1e6"},
        {"check while disabled", L UP US "anomaly:\n  enabled: no\n  factor: 0\n",
         "8:1: anomaly: user.factor must be a number from 1 to 1e6"},
        {"check section before users", L UP "anomaly: {sustain: 0}\n" US,
         "5:1: anomaly: user.sustain_s must be from 1 to 2592000"},
        {"check section wins over a user", L UP
         "users:\n  web:\n    acl: \"on\"\n    anomaly: {factor: 0.5}\n"
         "anomaly:\n  factor: 0.5\n",
         "9:1: anomaly: user.factor must be a number from 1 to 1e6"},
        /* ... and at the user's anomaly key when only that user's settings are wrong. */
        {"check user factor", L UP US "  ro:\n    acl: \"on\"\n    anomaly:\n"
         "      factor: 0.5\n",
         "10:5: anomaly: overrides[1].factor must be a number from 1 to 1e6"},
        {"check user sustain, section present", L UP
         "anomaly: {sustain: 20s}\n"
         "users:\n  web:\n    acl: \"on\"\n    anomaly: {k: 1}\n"
         "  ro:\n    acl: \"on\"\n    anomaly: {sustain: 0s}\n",
         "12:5: anomaly: overrides[1].sustain_s must be from 1 to 2592000"},
        {"check first bad user", L UP
         "users:\n  a: {acl: on, anomaly: {min_rate: 1}}\n"
         "  b: {acl: on, anomaly: {k: 2000000}}\n"
         "  c: {acl: on, anomaly: {factor: 0}}\n",
         "7:16: anomaly: overrides[1].k must be a number from 0 to 1e6"},
        {"check user connection_surge_factor", L UP
         "users:\n  a: {acl: on, anomaly: {connection_surge_factor: 0.99}}\n",
         "6:16: anomaly: overrides[0].connection_surge_factor must be a number from 1 to 1e6"},
    };
#undef NUM
#undef SECS
#undef U32
    run_errors(cases, ARRAY_SIZE(cases));
}

#undef L
#undef UP
#undef US

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */
/* ---------------------------------------------------------------------------------------- */

#define L "listeners:\n  - bind: 127.0.0.1:6379\n" /* lines 1-2 */
#define UP "upstream:\n  url: rediss://h\n"       /* 2 lines */
#define US "users:\n  web:\n    acl: \"on\"\n"   /* 3 lines */

/* Enforcement and admin: off by default; each key turns its feature on with documented defaults. */
static void test_enforcement_and_admin(void **state)
{
    (void)state;
    struct config *c = load_ok(L UP US);
    assert_false(c->admin.enabled);
    assert_false(c->limits.login_lockout.enabled);
    assert_false(c->limits.rate_limit.enabled);
    assert_false(c->users[0].rate_limit.enabled);
    config_free(c);

    c = load_ok(L UP
                "users:\n"
                "  web:\n    acl: \"on\"\n"
                "  batch:\n    acl: \"on\"\n    rate_limit:\n      commands_per_second: 50\n      burst: 500\n"
                "  admin:\n    acl: \"on\"\n    rate_limit:\n      commands_per_second: 0\n"
                "limits:\n"
                "  rate_limit:\n    commands_per_second: 2.5\n"
                "  login_lockout: {}\n"
                "admin: {}\n");
    assert_true(c->limits.rate_limit.enabled);
    /* web inherits limits.rate_limit; burst defaults to one second's worth (at least 1) */
    assert_true(c->users[0].rate_limit.enabled);
    assert_true(c->users[0].rate_limit.rate == 2.5);
    assert_true(c->users[0].rate_limit.burst == 2.5);
    assert_true(c->users[1].rate_limit.rate == 50);
    assert_true(c->users[1].rate_limit.burst == 500);
    assert_false(c->users[2].rate_limit.enabled); /* 0: this user opts out */
    assert_true(c->limits.login_lockout.enabled);
    assert_int_equal(c->limits.login_lockout.failures, 10);
    assert_int_equal(c->limits.login_lockout.window_ms, 60000);
    assert_int_equal(c->limits.login_lockout.duration_ms, 300000);
    assert_true(c->admin.enabled);
    assert_string_equal(c->admin.listen.bind, "127.0.0.1:9121");
    assert_int_equal(c->admin.listen.port, 9121);
    assert_int_equal(c->admin.probe_interval_ms, 5000);
    config_free(c);

    /* "key:" alone (or ~, null) is the same as "key: {}" */
    static const char *const empties[][2] = {{"", ""}, {" ~", " null"}, {" NULL", " Null"}};
    for (size_t i = 0; i < ARRAY_SIZE(empties); i++) {
        char yaml[512];
        snprintf(yaml, sizeof yaml, L UP US "limits:\n  login_lockout:%s\nadmin:%s\n", empties[i][0], empties[i][1]);
        c = load_ok(yaml);
        assert_true(c->limits.login_lockout.enabled);
        assert_int_equal(c->limits.login_lockout.failures, 10);
        assert_true(c->admin.enabled);
        assert_int_equal(c->admin.listen.port, 9121);
        config_free(c);
    }

    c = load_ok(L UP US
                "limits:\n  login_lockout:\n    failures: 3\n    window: 10s\n    duration: 2m\n"
                "admin:\n  bind: \"[::]:9100\"\n  allow_from: [10.0.0.0/8]\n  probe_interval: 500ms\n");
    assert_int_equal(c->limits.login_lockout.failures, 3);
    assert_int_equal(c->limits.login_lockout.window_ms, 10000);
    assert_int_equal(c->limits.login_lockout.duration_ms, 120000);
    assert_int_equal(c->admin.listen.addr.ss_family, AF_INET6);
    assert_int_equal(c->admin.allow_from.count, 1);
    assert_int_equal(c->admin.probe_interval_ms, 500);
    config_free(c);
}

static void test_errors_enforcement_and_admin(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"admin on another address without allow_from", L UP US "admin:\n  bind: 0.0.0.0:9121\n",
         "9:9: admin.bind: the admin listener has no authentication; a non-loopback address needs "
         "admin.allow_from"},
        {"admin bad bind", L UP US "admin:\n  bind: nowhere\n",
         "9:9: admin.bind: expected host:port with a numeric IPv4 address, [IPv6]:port or localhost:port"},
        {"admin unknown key", L UP US "admin:\n  port: 1\n", "9:3: unknown key 'port' in admin"},
        {"admin probe too fast", L UP US "admin:\n  probe_interval: 1ms\n",
         "9:19: admin.probe_interval: expected a duration from 100ms to 1h, like 250ms, 5s, 2m or 1h"},
        {"rate limit without rate", L UP US "limits:\n  rate_limit:\n    burst: 5\n",
         "10:5: missing required key 'commands_per_second' in limits.rate_limit"},
        {"rate limit negative", L UP US "limits:\n  rate_limit:\n    commands_per_second: -1\n",
         "10:26: limits.rate_limit.commands_per_second: expected a number that is not negative, like 20 or 0.5"},
        {"rate limit burst below 1", L UP
         "users:\n  web:\n    acl: \"on\"\n    rate_limit:\n      commands_per_second: 5\n      burst: 0.5\n",
         "10:14: users.web.rate_limit.burst: expected a number from 1 to 1000000000"},
        {"rate limit too high", L UP US "limits:\n  rate_limit:\n    commands_per_second: 2000000000\n",
         "10:26: limits.rate_limit.commands_per_second: at most 1000000000"},
        {"lockout zero failures", L UP US "limits:\n  login_lockout:\n    failures: 0\n",
         "10:15: limits.login_lockout.failures: expected a whole number from 1 to 1000000"},
        {"lockout unknown key", L UP US "limits:\n  login_lockout:\n    attempts: 3\n",
         "10:5: unknown key 'attempts' in limits.login_lockout"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

static void test_errors_top(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"unknown top key", L UP US "metrics:\n  bind: 127.0.0.1:9121\n",
         "8:1: unknown key 'metrics'"},
        {"unknown before values", "users: 5\nbogus: 1\n", "2:1: unknown key 'bogus'"},
        {"unknown key with newline", "\"a\\nb\": 1\n", "1:1: unknown key 'a?b'"},
        {"long unknown key",
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: 1\n",
         "1:1: unknown key '" /* cut at 68 characters */
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'"},
        {"duplicate top key", L L, "3:1: duplicate key 'listeners'"},
        {"missing listeners", UP US, "1:1: missing required key 'listeners'"},
        {"missing upstream", L US, "1:1: missing required key 'upstream'"},
        {"missing users", L UP, "1:1: missing required key 'users'"},
        {"top-level list", "- a\n- b\n"
         "", "1:1: the configuration: expected a mapping, found a list"},
        {"top-level scalar", "hello\n"
         "", "1:1: the configuration: expected a mapping, found a single value"},
        {"empty file", "", "1:1: the configuration is empty"},
        {"comments only", "# nothing\n", "1:1: the configuration is empty"},
        {"two documents", L UP US "---\nlog: {level: info}\n",
         "9:1: only one YAML document is allowed"},
        {"syntax error", "listeners:\n  - bind: [127.0.0.1:6379\nupstream: {}\n",
         "3:9: invalid YAML: did not find expected ',' or ']' while parsing a flow sequence"},
        {"bad indentation", "upstream:\n  url: a\n ca_file: b\n",
         "3:2: invalid YAML: did not find expected key while parsing a block mapping"},
        {"tab", "upstream:\n\turl: a\n",
         "2:1: invalid YAML: found character that cannot start any token while scanning for the "
         "next token"},
        {"invalid UTF-8", "users:\n  w\xff: {acl: on}\n",
         "2:4: invalid YAML: invalid leading UTF-8 octet"},
        {"undefined alias", "listeners: *nope\n",
         "1:12: invalid YAML: found undefined alias"},
        {"non-scalar key", "? [a]\n: b\n", "1:3: expected a key name, found a list"},
        {"non-scalar nested key", "upstream:\n  {a: b}: c\n",
         "2:3: expected a key name in upstream, found a mapping"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

static void test_errors_listeners(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"empty", "listeners: []\n", "1:12: listeners: at least one listener is required"},
        {"scalar", "listeners: 127.0.0.1:6379\n",
         "1:12: listeners: expected a list, found a single value"},
        {"null", "listeners:\n", "1:11: listeners: expected a list, found a single value"},
        {"item not a mapping", "listeners:\n  - 127.0.0.1:6379\n",
         "2:5: listeners[0]: expected a mapping, found a single value"},
        {"unknown key", "listeners:\n  - bind: 127.0.0.1:6379\n    port: 6379\n",
         "3:5: unknown key 'port' in listeners[0]"},
        {"missing bind", "listeners:\n  - allow_from: [10.0.0.0/8]\n",
         "2:5: missing required key 'bind' in listeners[0]"},
        {"plaintext 0.0.0.0", "listeners:\n  - bind: 0.0.0.0:6379\n",
         "2:11: plaintext listener on non-loopback address 0.0.0.0:6379 is refused: add tls or "
         "bind to 127.0.0.1"},
        {"plaintext [::]", "listeners:\n  - bind: \"[::]:6379\"\n",
         "2:11: plaintext listener on non-loopback address [::]:6379 is refused: add tls or bind "
         "to 127.0.0.1"},
        {"plaintext second", L "  - bind: 10.1.2.3:6380\n    allow_from: [10.0.0.0/8]\n",
         "3:11: plaintext listener on non-loopback address 10.1.2.3:6380 is refused: add tls or "
         "bind to 127.0.0.1"},
        {"no port", "listeners:\n  - bind: 127.0.0.1\n",
         "2:11: listeners[0].bind: expected host:port with a numeric IPv4 address, [IPv6]:port or "
         "localhost:port"},
        {"host name", "listeners:\n  - bind: example.com:6379\n",
         "2:11: listeners[0].bind: expected host:port with a numeric IPv4 address, [IPv6]:port or "
         "localhost:port"},
        {"unbracketed v6", "listeners:\n  - bind: ::1:6379\n",
         "2:11: listeners[0].bind: write an IPv6 address in brackets, like [::1]:6379"},
        {"bad v6", "listeners:\n  - bind: \"[::g]:6379\"\n",
         "2:11: listeners[0].bind: expected host:port with a numeric IPv4 address, [IPv6]:port or "
         "localhost:port"},
        {"port 0", "listeners:\n  - bind: 127.0.0.1:0\n",
         "2:11: listeners[0].bind: the port must be a number from 1 to 65535"},
        {"port 65536", "listeners:\n  - bind: 127.0.0.1:65536\n",
         "2:11: listeners[0].bind: the port must be a number from 1 to 65535"},
        {"port garbage", "listeners:\n  - bind: 127.0.0.1:63x\n",
         "2:11: listeners[0].bind: the port must be a number from 1 to 65535"},
        {"bind as list", "listeners:\n  - bind: [127.0.0.1, 6379]\n",
         "2:11: listeners[0].bind: expected a single value, found a list"},
        {"duplicate", L "  - bind: localhost:6379\n",
         "3:11: listeners[1].bind: localhost:6379 is already used by listeners[0]"},
        {"tls unknown key",
         "listeners:\n  - bind: 0.0.0.0:6380\n    tls:\n      cert_file: a\n      key_file: b\n"
         "      verify_client: yes\n",
         "6:7: unknown key 'verify_client' in listeners[0].tls"},
        {"tls missing key_file", "listeners:\n  - bind: 0.0.0.0:6380\n    tls:\n"
         "      cert_file: a\n",
         "4:7: missing required key 'key_file' in listeners[0].tls"},
        {"tls empty", "listeners:\n  - bind: 0.0.0.0:6380\n    tls: {}\n",
         "3:10: missing required key 'cert_file' in listeners[0].tls"},
        {"tls not a mapping", "listeners:\n  - bind: 0.0.0.0:6380\n    tls: yes\n",
         "3:10: listeners[0].tls: expected a mapping, found a single value"},
        {"tls empty cert name", "listeners:\n  - bind: 0.0.0.0:6380\n"
         "    tls: {cert_file: '', key_file: k}\n",
         "3:22: listeners[0].tls.cert_file: empty file name"},
        {"user_from_cert without ca",
         "listeners:\n  - bind: 0.0.0.0:6380\n"
         "    tls: {cert_file: a, key_file: b, user_from_cert: cn}\n",
         "3:38: listeners[0].tls: user_from_cert needs client_ca_file (only a verified client "
         "certificate can name a user)"},
        {"user_from_cert dn",
         "listeners:\n  - bind: 0.0.0.0:6380\n"
         "    tls: {cert_file: a, key_file: b, user_from_cert: dn}\n",
         "3:54: listeners[0].tls.user_from_cert: expected cn (the only supported source)"},
        {"allow_from empty", "listeners:\n  - bind: 127.0.0.1:1\n    allow_from: []\n",
         "3:17: listeners[0].allow_from: empty list (remove the key to allow every address)"},
        {"allow_from scalar", "listeners:\n  - bind: 127.0.0.1:1\n    allow_from: 10.0.0.0/8\n",
         "3:17: listeners[0].allow_from: expected a list of addresses or CIDR ranges, found a "
         "single value"},
        {"allow_from bad", "listeners:\n  - bind: 127.0.0.1:1\n"
         "    allow_from: [10.0.0.0/8, 10.0.0.300/8]\n",
         "3:30: listeners[0].allow_from[1]: invalid address or CIDR range '10.0.0.300/8'"},
        {"allow_from /33", "listeners:\n  - bind: 127.0.0.1:1\n    allow_from:\n"
         "      - 10.0.0.0/33\n",
         "4:9: listeners[0].allow_from[0]: invalid address or CIDR range '10.0.0.0/33'"},
        {"allow_from hostname", "listeners:\n  - bind: 127.0.0.1:1\n    allow_from: [localhost]\n",
         "3:18: listeners[0].allow_from[0]: invalid address or CIDR range 'localhost'"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

static void test_errors_upstream(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"not a mapping", "upstream: rediss://h\n",
         "1:11: upstream: expected a mapping, found a single value"},
        {"missing url", "upstream:\n  ca_file: x\n", "2:3: missing required key 'url' in upstream"},
        {"redis://", "upstream:\n  url: redis://h:6379\n",
         "2:8: upstream.url: plaintext redis:// is refused, upstream is TLS always (use "
         "rediss://)"},
        {"REDIS://", "upstream:\n  url: REDIS://h\n",
         "2:8: upstream.url: plaintext redis:// is refused, upstream is TLS always (use "
         "rediss://)"},
        {"http", "upstream:\n  url: https://h\n", "2:8: upstream.url: expected a rediss:// URL"},
        {"no scheme", "upstream:\n  url: h:6379\n", "2:8: upstream.url: expected a rediss:// URL"},
        {"database 1", "upstream:\n  url: rediss://h:6379/1\n",
         "2:8: upstream.url: the database must be 0 or absent (respguard sessions use database 0)"},
        {"path", "upstream:\n  url: rediss://h/0/x\n",
         "2:8: upstream.url: the database must be 0 or absent (respguard sessions use database 0)"},
        {"query", "upstream:\n  url: rediss://h:6379?ssl_cert_reqs=none\n",
         "2:8: upstream.url: query and fragment are not supported (TLS verification cannot be "
         "switched off)"},
        {"port 0", "upstream:\n  url: rediss://h:0\n",
         "2:8: upstream.url: the port must be a number from 1 to 65535"},
        {"port empty", "upstream:\n  url: \"rediss://h:\"\n",
         "2:8: upstream.url: the port must be a number from 1 to 65535"},
        {"port name", "upstream:\n  url: rediss://h:redis\n",
         "2:8: upstream.url: the port must be a number from 1 to 65535"},
        {"empty host", "upstream:\n  url: rediss://:6379\n",
         "2:8: upstream.url: expected a host name, an IPv4 address or [IPv6]"},
        {"host with space", "upstream:\n  url: rediss://a b\n",
         "2:8: upstream.url: expected a host name, an IPv4 address or [IPv6]"},
        {"bad v6", "upstream:\n  url: \"rediss://[fe80::1%eth0]:6379\"\n",
         "2:8: upstream.url: invalid IPv6 address in brackets"},
        {"unclosed v6", "upstream:\n  url: \"rediss://[::1\"\n",
         "2:8: upstream.url: invalid IPv6 address in brackets"},
        {"v6 then junk", "upstream:\n  url: \"rediss://[::1]x\"\n",
         "2:8: upstream.url: the port must be a number from 1 to 65535"},
        {"bad percent", "upstream:\n  url: rediss://u:p%zz@h\n",
         "2:8: upstream.url: invalid percent-encoding in the user or password"},
        {"short percent", "upstream:\n  url: rediss://u:p%4@h\n",
         "2:8: upstream.url: invalid percent-encoding in the user or password"},
        {"percent NUL", "upstream:\n  url: rediss://u%00:p@h\n",
         "2:8: upstream.url: invalid percent-encoding in the user or password"},
        {"user without password", "upstream:\n  url: rediss://app@h\n",
         "2:8: upstream.url: a user name needs a password (in the url or in password_file)"},
        {"password twice", "upstream:\n  url: rediss://:pw@h\n"
         "  password_file: @DATA@/password.txt\n",
         "3:3: upstream: the password is given both in url and in password_file"},
        {"password_file missing", "upstream:\n  url: rediss://h\n"
         "  password_file: /nonexistent/pw\n",
         "3:18: upstream.password_file: cannot read /nonexistent/pw: No such file or directory"},
        {"password_file relative missing", "upstream:\n  url: rediss://h\n"
         "  password_file: nope.txt\n",
         "3:18: upstream.password_file: cannot read @TMP@/nope.txt: No such file or directory"},
        {"password_file directory", "upstream:\n  url: rediss://h\n  password_file: @DATA@\n",
         "3:18: upstream.password_file: cannot read @DATA@: Is a directory"},
        {"password_file device", "upstream:\n  url: rediss://h\n  password_file: /dev/null\n",
         "3:18: upstream.password_file: cannot read /dev/null: not a regular file"},
        {"verify", "upstream:\n  url: rediss://h\n  verify: false\n",
         "3:3: unknown key 'verify' in upstream"},
        {"insecure", "upstream:\n  insecure: true\n  url: rediss://h\n",
         "2:3: unknown key 'insecure' in upstream"},
        {"tls_verify", "upstream:\n  url: rediss://h\n  tls_verify: no\n",
         "3:3: unknown key 'tls_verify' in upstream"},
        {"password key", "upstream:\n  url: rediss://h\n  password: x\n",
         "3:3: unknown key 'password' in upstream"},
        {"server_name", "upstream:\n  url: rediss://h\n  server_name: \"a b\"\n",
         "3:16: upstream.server_name: expected a DNS name"},
        {"connect_timeout 0", "upstream:\n  url: rediss://h\n  connect_timeout: 0\n",
         "3:20: upstream.connect_timeout: expected a duration from 1ms to 1h, like 250ms, 5s, 2m "
         "or 1h"},
        {"connect_timeout unit", "upstream:\n  url: rediss://h\n  connect_timeout: 5sec\n",
         "3:20: upstream.connect_timeout: expected a duration from 1ms to 1h, like 250ms, 5s, 2m "
         "or 1h"},
        {"connect_timeout 2h", "upstream:\n  url: rediss://h\n  connect_timeout: 2h\n",
         "3:20: upstream.connect_timeout: expected a duration from 1ms to 1h, like 250ms, 5s, 2m "
         "or 1h"},
        {"credentials list", "upstream:\n  url: rediss://h\n  credentials: [a]\n",
         "3:16: upstream.credentials: expected a mapping, found a list"},
        {"credential without password", "upstream:\n  url: rediss://h\n  credentials:\n    ro:\n"
         "      username: u\n",
         "5:7: missing required key 'password' (or 'password_file') in upstream.credentials.ro"},
        {"credential both passwords",
         "upstream:\n  url: rediss://h\n  credentials:\n    ro:\n      password: x\n"
         "      password_file: y\n",
         "6:7: upstream.credentials.ro: 'password' and 'password_file' cannot both be given"},
        {"credential unknown key",
         "upstream:\n  url: rediss://h\n  credentials:\n    ro: {password: x, user: u}\n",
         "4:23: unknown key 'user' in upstream.credentials.ro"},
        {"credential name", "upstream:\n  url: rediss://h\n  credentials:\n"
         "    \"r o\": {password: x}\n",
         "4:5: upstream.credentials: invalid credential name 'r o': 1 to 64 characters, no spaces "
         "or control characters"},
        {"credential duplicate",
         "upstream:\n  url: rediss://h\n  credentials:\n    ro: {password: x}\n"
         "    ro: {password: y}\n",
         "5:5: duplicate key 'ro' in upstream.credentials"},
        {"credential empty username",
         "upstream:\n  url: rediss://h\n  credentials:\n    ro: {password: x, username: \"\"}\n",
         "4:33: upstream.credentials.ro.username: empty value"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

/* ---------------------------------------------------------------------------------------- */
/* upstream.pool                                                                            */
/* ---------------------------------------------------------------------------------------- */

#define POOL_HEAD "listeners: [{bind: 127.0.0.1:1}]\nusers: {w: {acl: on}}\nupstream:\n" \
                  "  url: rediss://h\n"

static void assert_pool_equal(const struct config_pool *got, const struct config_pool *want)
{
    assert_int_equal(got->mode, want->mode);
    assert_int_equal(got->size, want->size);
    assert_int_equal(got->min_idle, want->min_idle);
    assert_int_equal(got->idle_timeout_ms, want->idle_timeout_ms);
    assert_int_equal(got->max_lifetime_ms, want->max_lifetime_ms);
    assert_int_equal(got->keepalive_ms, want->keepalive_ms);
    assert_int_equal(got->acquire_timeout_ms, want->acquire_timeout_ms);
}

static const struct config_pool pool_defaults = {
    .mode = CONFIG_POOL_SESSION,
    .size = 64,
    .min_idle = 4,
    .idle_timeout_ms = 300000,
    .max_lifetime_ms = 3600000,
    .keepalive_ms = 30000,
    .acquire_timeout_ms = 5000,
};

static void test_pool_defaults(void **state)
{
    (void)state;
    char err[512];
    struct config *c = NULL;
    /* No pool section at all. */
    assert_int_equal(config_load(DATA "/minimal.yaml", &c, err, sizeof err), 0);
    assert_pool_equal(&c->upstream.pool, &pool_defaults);
    config_free(c);
    /* An empty pool mapping: the same. */
    c = load_ok(POOL_HEAD "  pool: {}\n");
    assert_pool_equal(&c->upstream.pool, &pool_defaults);
    config_free(c);
}

static void test_pool_values(void **state)
{
    (void)state;
    /* Every key; the other keys keep their defaults. */
    static const struct {
        const char *yaml;
        struct config_pool want;
    } cases[] = {
        {"  pool:\n"
         "    mode: multiplex\n"
         "    size: 200\n"
         "    min_idle: 16\n"
         "    idle_timeout: 2m\n"
         "    max_lifetime: 30m\n"
         "    keepalive: 250ms\n"
         "    acquire_timeout: 1500ms\n",
         {CONFIG_POOL_MULTIPLEX, 200, 16, 120000, 1800000, 250, 1500}},
        {"  pool: {mode: session}\n",
         {CONFIG_POOL_SESSION, 64, 4, 300000, 3600000, 30000, 5000}},
        {"  pool: {mode: multiplex}\n",
         {CONFIG_POOL_MULTIPLEX, 64, 4, 300000, 3600000, 30000, 5000}},
        /* 0: never */
        {"  pool: {idle_timeout: 0, max_lifetime: 0, keepalive: 0}\n",
         {CONFIG_POOL_SESSION, 64, 4, 0, 0, 0, 5000}},
        {"  pool: {idle_timeout: 0s, max_lifetime: 0ms, keepalive: 0m}\n",
         {CONFIG_POOL_SESSION, 64, 4, 0, 0, 0, 5000}},
        /* the limits themselves */
        {"  pool: {size: 1, min_idle: 0, acquire_timeout: 1ms}\n",
         {CONFIG_POOL_SESSION, 1, 0, 300000, 3600000, 30000, 1}},
        {"  pool: {size: 100000, min_idle: 100000, idle_timeout: 168h, max_lifetime: 8760h, "
         "keepalive: 24h, acquire_timeout: 1h}\n",
         {CONFIG_POOL_SESSION, 100000, 100000, 7ull * 86400000, 365ull * 86400000, 86400000,
          3600000}},
        /* min_idle equal to size is fine, in either order */
        {"  pool: {min_idle: 8, size: 8}\n",
         {CONFIG_POOL_SESSION, 8, 8, 300000, 3600000, 30000, 5000}},
        {"  pool: {size: 3, min_idle: 2}\n",
         {CONFIG_POOL_SESSION, 3, 2, 300000, 3600000, 30000, 5000}},
        /* only size, smaller than the default min_idle: min_idle follows it down silently */
        {"  pool: {size: 2}\n",
         {CONFIG_POOL_SESSION, 2, 2, 300000, 3600000, 30000, 5000}},
        {"  pool: {size: 1}\n",
         {CONFIG_POOL_SESSION, 1, 1, 300000, 3600000, 30000, 5000}},
        /* only size, larger: min_idle keeps its default */
        {"  pool: {size: 5}\n",
         {CONFIG_POOL_SESSION, 5, 4, 300000, 3600000, 30000, 5000}},
        /* only min_idle, within the default size */
        {"  pool: {min_idle: 64}\n",
         {CONFIG_POOL_SESSION, 64, 64, 300000, 3600000, 30000, 5000}},
        /* environment variables are expanded in values */
        {"  pool: {size: \"${RG_TEST_PORT}\", keepalive: \"${RG_TEST_PORT}ms\"}\n",
         {CONFIG_POOL_SESSION, 7001, 4, 300000, 3600000, 7001, 5000}},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char yaml[1024];
        snprintf(yaml, sizeof yaml, "%s%s", POOL_HEAD, cases[i].yaml);
        struct config *c = load_ok(yaml);
        assert_pool_equal(&c->upstream.pool, &cases[i].want);
        /* the rest of upstream is untouched by its pool section */
        assert_string_equal(c->upstream.host, "h");
        assert_int_equal(c->upstream.connect_timeout_ms, 5000);
        config_free(c);
    }
}

static void test_errors_pool(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"unknown key", "upstream:\n  url: rediss://h\n  pool:\n    max_size: 5\n",
         "4:5: unknown key 'max_size' in upstream.pool"},
        {"unknown key after good ones",
         "upstream:\n  url: rediss://h\n  pool: {mode: session, size: 4, timeout: 1s}\n",
         "3:34: unknown key 'timeout' in upstream.pool"},
        {"key in the wrong case", "upstream:\n  url: rediss://h\n  pool:\n    Size: 5\n",
         "4:5: unknown key 'Size' in upstream.pool"},
        {"duplicate key", "upstream:\n  url: rediss://h\n  pool:\n    size: 5\n    size: 6\n",
         "5:5: duplicate key 'size' in upstream.pool"},
        {"pool scalar", "upstream:\n  url: rediss://h\n  pool: session\n",
         "3:9: upstream.pool: expected a mapping, found a single value"},
        {"pool list", "upstream:\n  url: rediss://h\n  pool: [session]\n",
         "3:9: upstream.pool: expected a mapping, found a list"},
        {"mode other", "upstream:\n  url: rediss://h\n  pool:\n    mode: transaction\n",
         "4:11: upstream.pool.mode: expected session or multiplex"},
        {"mode case", "upstream:\n  url: rediss://h\n  pool:\n    mode: Session\n",
         "4:11: upstream.pool.mode: expected session or multiplex"},
        {"mode empty", "upstream:\n  url: rediss://h\n  pool:\n    mode: \"\"\n",
         "4:11: upstream.pool.mode: expected session or multiplex"},
        {"mode list", "upstream:\n  url: rediss://h\n  pool:\n    mode: [session]\n",
         "4:11: upstream.pool.mode: expected a single value, found a list"},
        {"size 0", "upstream:\n  url: rediss://h\n  pool:\n    size: 0\n",
         "4:11: upstream.pool.size: expected a whole number from 1 to 100000"},
        {"size too big", "upstream:\n  url: rediss://h\n  pool:\n    size: 100001\n",
         "4:11: upstream.pool.size: expected a whole number from 1 to 100000"},
        {"size negative", "upstream:\n  url: rediss://h\n  pool:\n    size: -1\n",
         "4:11: upstream.pool.size: expected a whole number from 1 to 100000"},
        {"size unit", "upstream:\n  url: rediss://h\n  pool:\n    size: 10k\n",
         "4:11: upstream.pool.size: expected a whole number from 1 to 100000"},
        {"min_idle negative", "upstream:\n  url: rediss://h\n  pool:\n    min_idle: -1\n",
         "4:15: upstream.pool.min_idle: expected a whole number from 0 to 100000"},
        {"min_idle over size", "upstream:\n  url: rediss://h\n  pool:\n    size: 5\n"
         "    min_idle: 10\n",
         "5:15: upstream.pool.min_idle: 10 is more than size (5)"},
        {"min_idle over size, given first",
         "upstream:\n  url: rediss://h\n  pool: {min_idle: 3, size: 2}\n",
         "3:20: upstream.pool.min_idle: 3 is more than size (2)"},
        {"min_idle over the default size", "upstream:\n  url: rediss://h\n  pool:\n"
         "    min_idle: 65\n",
         "4:15: upstream.pool.min_idle: 65 is more than size (64)"},
        {"acquire_timeout 0", "upstream:\n  url: rediss://h\n  pool:\n    acquire_timeout: 0\n",
         "4:22: upstream.pool.acquire_timeout: expected a duration from 1ms to 1h, like 250ms, "
         "5s, 2m or 1h"},
        {"acquire_timeout 2h", "upstream:\n  url: rediss://h\n  pool:\n    acquire_timeout: 2h\n",
         "4:22: upstream.pool.acquire_timeout: expected a duration from 1ms to 1h, like 250ms, "
         "5s, 2m or 1h"},
        {"pool before url: the url is still required",
         "upstream:\n  pool: {size: 2}\n", "2:3: missing required key 'url' in upstream"},
    };
    run_errors(cases, ARRAY_SIZE(cases));

    /* Out-of-range and malformed durations: the key, its position and the kind of value wanted
     * (the range's wording is not pinned here). */
    static const struct {
        const char *yaml, *prefix;
    } dur[] = {
        {"    idle_timeout: 8d\n", "4:19: upstream.pool.idle_timeout: expected a duration from "},
        {"    idle_timeout: 169h\n", "4:19: upstream.pool.idle_timeout: expected a duration from "},
        {"    idle_timeout: -1s\n", "4:19: upstream.pool.idle_timeout: expected a duration from "},
        {"    max_lifetime: 8761h\n", "4:19: upstream.pool.max_lifetime: expected a duration from "},
        {"    max_lifetime: 1.5h\n", "4:19: upstream.pool.max_lifetime: expected a duration from "},
        {"    keepalive: 25h\n", "4:16: upstream.pool.keepalive: expected a duration from "},
        {"    keepalive: 30 s\n", "4:16: upstream.pool.keepalive: expected a duration from "},
    };
    for (size_t i = 0; i < ARRAY_SIZE(dur); i++) {
        char yaml[512], err[1024], path[512], want[1024];
        struct config *c = (struct config *)&c;
        snprintf(yaml, sizeof yaml, "upstream:\n  url: rediss://h\n  pool:\n%s", dur[i].yaml);
        int rc = load_text(yaml, &c, err, sizeof err, path, sizeof path);
        snprintf(want, sizeof want, "%s:%s", path, dur[i].prefix);
        if (rc >= 0 || c != NULL || strncmp(err, want, strlen(want)) != 0 ||
            !strstr(err, ", like 250ms, 5s, 2m or 1h")) {
            print_error("'%s': rc %d\n  got:  %s\n  want: %s...\n", dur[i].yaml, rc, err, want);
            fail();
        }
    }
}

static void test_errors_users(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"empty", "users: {}\n", "1:8: users: at least one user is required"},
        {"list", "users: [web]\n", "1:8: users: expected a mapping, found a list"},
        {"name with space", "users:\n  \"my user\":\n    acl: on\n",
         "2:3: users: invalid user name 'my user': 1 to 64 characters, no spaces or control "
         "characters"},
        {"name with control", "users:\n  \"a\\tb\": {acl: on}\n",
         "2:3: users: invalid user name 'a?b': 1 to 64 characters, no spaces or control "
         "characters"},
        {"name too long",
         "users:\n  u2345678901234567890123456789012345678901234567890123456789012345: {acl: on}\n",
         "2:3: users: invalid user name "
         "'u2345678901234567890123456789012345678901234567890123456789012345': 1 to 64 "
         "characters, no spaces or control characters"},
        {"name empty", "users:\n  \"\": {acl: on}\n",
         "2:3: users: invalid user name '': 1 to 64 characters, no spaces or control characters"},
        {"duplicate", "users:\n  web: {acl: on}\n  web: {acl: off}\n",
         "3:3: duplicate key 'web' in users"},
        {"value not a mapping", "users:\n  web: \"on >pw ~*\"\n",
         "2:8: users.web: expected a mapping, found a single value"},
        {"missing acl", "users:\n  web:\n    expires: 2027-01-01T00:00:00Z\n",
         "3:5: missing required key 'acl' (or 'acl_file') in users.web"},
        {"missing acl flow", "users:\n  web: {}\n",
         "2:8: missing required key 'acl' (or 'acl_file') in users.web"},
        {"acl and acl_file", "users:\n  web:\n    acl: on\n    acl_file: x\n",
         "4:5: users.web: 'acl' and 'acl_file' cannot both be given"},
        {"acl_file then acl", "users:\n  web:\n    acl_file: x\n    acl: on\n",
         "4:5: users.web: 'acl_file' and 'acl' cannot both be given"},
        {"acl empty", "users:\n  web:\n    acl: \"\"\n", "3:10: users.web.acl: empty value"},
        {"acl null", "users:\n  web:\n    acl:\n", "3:9: users.web.acl: missing value"},
        {"acl ~", "users:\n  web:\n    acl: ~\n", "3:10: users.web.acl: missing value"},
        {"acl list", "users:\n  web:\n    acl: [on, \"+@all\"]\n",
         "3:10: users.web.acl: expected a single value, found a list"},
        {"acl_file missing", "users:\n  web:\n    acl_file: /nonexistent/acl\n",
         "3:15: users.web.acl_file: cannot read /nonexistent/acl: No such file or directory"},
        {"unknown key", "users:\n  web:\n    acl: on\n    password: x\n",
         "4:5: unknown key 'password' in users.web"},
        {"unknown credential", L UP US "    upstream_credential: ro\n",
         "8:26: users.web.upstream_credential: no credential 'ro' in upstream.credentials"},
        {"unknown credential (other exists)",
         L "upstream:\n  url: rediss://h\n  credentials: {rw: {password: x}}\nusers:\n  web:\n"
         "    acl: on\n    upstream_credential: ro\n",
         "9:26: users.web.upstream_credential: no credential 'ro' in upstream.credentials"},
        {"credential before upstream (checked last)",
         L "users:\n  web:\n    acl: on\n    upstream_credential: ro\n" UP,
         "6:26: users.web.upstream_credential: no credential 'ro' in upstream.credentials"},
        {"expires date only", "users:\n  web:\n    acl: on\n    expires: 2027-06-30\n",
         "4:14: users.web.expires: expected an RFC 3339 UTC time like 2027-06-30T00:00:00Z"},
        {"expires offset", "users:\n  web:\n    acl: on\n    expires: 2027-06-30T00:00:00+02:00\n",
         "4:14: users.web.expires: expected an RFC 3339 UTC time like 2027-06-30T00:00:00Z"},
        {"expires Feb 30", "users:\n  web:\n    acl: on\n    expires: 2027-02-30T00:00:00Z\n",
         "4:14: users.web.expires: expected an RFC 3339 UTC time like 2027-06-30T00:00:00Z"},
        {"expires Feb 29 2027", "users:\n  web:\n    acl: on\n    expires: 2027-02-29T00:00:00Z\n",
         "4:14: users.web.expires: expected an RFC 3339 UTC time like 2027-06-30T00:00:00Z"},
        {"expires hour 24", "users:\n  web:\n    acl: on\n    expires: 2027-06-30T24:00:00Z\n",
         "4:14: users.web.expires: expected an RFC 3339 UTC time like 2027-06-30T00:00:00Z"},
        {"allow_from bad", "users:\n  web:\n    acl: on\n    allow_from: [10.0.0.0/8x]\n",
         "4:18: users.web.allow_from[0]: invalid address or CIDR range '10.0.0.0/8x'"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

static void test_errors_sections(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"guard unknown key", "guard:\n  always: [x]\n", "2:3: unknown key 'always' in guard"},
        {"guard scalar", "guard: flushall\n"
         "", "1:8: guard: expected a mapping, found a single value"},
        {"never scalar", "guard:\n  never_by_category: flushall\n",
         "2:22: guard.never_by_category: expected a list of command names, found a single value"},
        {"never bad name", "guard:\n  never_by_category: [flushall, \"bad name\"]\n",
         "2:33: guard.never_by_category[1]: expected a command name like flushall or client|kill"},
        {"never two bars", "guard:\n  never_by_category: [a|b|c]\n",
         "2:23: guard.never_by_category[0]: expected a command name like flushall or client|kill"},
        {"never trailing bar", "guard:\n  never_by_category: [client|]\n",
         "2:23: guard.never_by_category[0]: expected a command name like flushall or client|kill"},
        {"limits unknown key", "limits:\n  max_connections: 5\n",
         "2:3: unknown key 'max_connections' in limits"},
        {"limits scalar", "limits: 5\n", "1:9: limits: expected a mapping, found a single value"},
        {"max_clients 0", "limits:\n  max_clients: 0\n",
         "2:16: limits.max_clients: expected a whole number from 1 to 1000000"},
        {"max_clients big", "limits:\n  max_clients: 1000001\n",
         "2:16: limits.max_clients: expected a whole number from 1 to 1000000"},
        {"max_clients garbage", "limits:\n  max_clients: 10abc\n",
         "2:16: limits.max_clients: expected a whole number from 1 to 1000000"},
        {"max_clients negative", "limits:\n  max_clients: -5\n",
         "2:16: limits.max_clients: expected a whole number from 1 to 1000000"},
        {"max_clients space", "limits:\n  max_clients: \" 5\"\n",
         "2:16: limits.max_clients: expected a whole number from 1 to 1000000"},
        {"max_clients float", "limits:\n  max_clients: 1e3\n",
         "2:16: limits.max_clients: expected a whole number from 1 to 1000000"},
        {"max_args overflow", "limits:\n  max_args: 99999999999999999999999\n",
         "2:13: limits.max_args: expected a whole number from 1 to 2147483647"},
        {"max_args 0", "limits:\n  max_args: 0\n",
         "2:13: limits.max_args: expected a whole number from 1 to 2147483647"},
        {"max_request_bytes unit", "limits:\n  max_request_bytes: 10xb\n",
         "2:22: limits.max_request_bytes: expected a size from 1kb to 4gb, like 512kb, 10mb or "
         "1gb"},
        {"max_request_bytes 0", "limits:\n  max_request_bytes: 0\n",
         "2:22: limits.max_request_bytes: expected a size from 1kb to 4gb, like 512kb, 10mb or "
         "1gb"},
        {"max_request_bytes 5gb", "limits:\n  max_request_bytes: 5gb\n",
         "2:22: limits.max_request_bytes: expected a size from 1kb to 4gb, like 512kb, 10mb or "
         "1gb"},
        {"client_output_bytes 1000", "limits:\n  client_output_bytes: 1000\n",
         "2:24: limits.client_output_bytes: expected a size from 1kb to 64gb, like 512kb, 10mb or "
         "1gb"},
        {"upstream_output_bytes overflow", "limits:\n"
         "  upstream_output_bytes: 99999999999999999gb\n",
         "2:26: limits.upstream_output_bytes: expected a size from 1kb to 64gb, like 512kb, 10mb "
         "or 1gb"},
        {"login_timeout 0", "limits:\n  login_timeout: 0s\n",
         "2:18: limits.login_timeout: expected a duration from 1ms to 1h, like 250ms, 5s, 2m or "
         "1h"},
        {"shutdown_timeout fraction", "limits:\n  shutdown_timeout: 1.5s\n",
         "2:21: limits.shutdown_timeout: expected a duration from 1ms to 1h, like 250ms, 5s, 2m "
         "or 1h"},
        {"log level", "log:\n  level: verbose\n"
         "", "2:10: log.level: expected debug, info, warn or error"},
        {"log level case", "log:\n  level: INFO\n"
         "", "2:10: log.level: expected debug, info, warn or error"},
        {"log keys", "log:\n  keys: maybe\n", "2:9: log.keys: expected yes, no, true or false"},
        {"log keys 1", "log:\n  keys: 1\n", "2:9: log.keys: expected yes, no, true or false"},
        {"log unknown key", "log:\n  format: json\n", "2:3: unknown key 'format' in log"},
        {"log duplicate key", "log: {level: info, level: debug}\n",
         "1:20: duplicate key 'level' in log"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

static void test_errors_values(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"env unset", "upstream:\n  url: rediss://:${RG_TEST_UNSET}@h\n",
         "2:8: environment variable RG_TEST_UNSET is not set"},
        {"env unset in a list", "listeners:\n  - bind: 127.0.0.1:1\n"
         "    allow_from: [\"${RG_TEST_UNSET}\"]\n",
         "3:18: environment variable RG_TEST_UNSET is not set"},
        {"env unset in a key of limits", "limits:\n  max_clients: ${RG_TEST_UNSET}\n",
         "2:16: environment variable RG_TEST_UNSET is not set"},
        {"env unterminated", "upstream:\n  url: rediss://:${RG_TEST_PORT@h\n",
         "2:8: unterminated ${ (write $$ for a literal $)"},
        {"env bad name", "upstream:\n  url: rediss://:${1X}@h\n",
         "2:8: invalid environment variable name in ${...}"},
        {"env empty name", "upstream:\n  url: rediss://:${}@h\n",
         "2:8: invalid environment variable name in ${...}"},
        {"env name with dash", "upstream:\n  url: \"rediss://:${A-B}@h\"\n",
         "2:8: invalid environment variable name in ${...}"},
        {"null", "upstream:\n  url: ~\n", "2:8: upstream.url: missing value"},
        {"null word", "upstream:\n  url: null\n", "2:8: upstream.url: missing value"},
        {"NUL character", "upstream:\n  url: \"rediss://h\\0x\"\n",
         "2:8: upstream.url: contains a NUL character"},
        {"list for a string", "upstream:\n  url: [a]\n",
         "2:8: upstream.url: expected a single value, found a list"},
        {"mapping for a string", "upstream:\n  url: {a: b}\n",
         "2:8: upstream.url: expected a single value, found a mapping"},
        {"alias to a mapping", "upstream:\n  url: &x rediss://h\n  ca_file: *x\n"
         "  server_name: {a: *x}\n",
         "4:16: upstream.server_name: expected a single value, found a mapping"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

static void test_errors_secret_files(void **state)
{
    (void)state;
    char path[512];
    write_text(path, sizeof path, "empty.txt", "");
    write_text(path, sizeof path, "newline.txt", "\n");
    write_file(path, sizeof path, "nul.txt", "TOPSECRET\0x\n", 12);
    char *big = malloc((1u << 20) + 1);
    assert_non_null(big);
    memset(big, 'a', (1u << 20) + 1);
    write_file(path, sizeof path, "big.txt", big, (1u << 20) + 1); /* one byte over the cap */
    free(big);
    static const struct err_case cases[] = {
        {"empty", "upstream:\n  url: rediss://h\n  password_file: empty.txt\n",
         "3:18: upstream.password_file: @TMP@/empty.txt is empty"},
        {"only a newline", "users:\n  web:\n    acl_file: newline.txt\n",
         "3:15: users.web.acl_file: @TMP@/newline.txt is empty"},
        {"NUL byte", "upstream:\n  url: rediss://h\n  credentials: {a: {password_file: nul.txt}}\n",
         "3:36: upstream.credentials.a.password_file: @TMP@/nul.txt contains a NUL byte"},
        {"empty name", "upstream:\n  url: rediss://h\n  password_file: \"\"\n",
         "3:18: upstream.password_file: empty file name"},
        {"too large", "users:\n  web:\n    acl_file: big.txt\n",
         "3:15: users.web.acl_file: cannot read @TMP@/big.txt: file too large"},
    };
    run_errors(cases, ARRAY_SIZE(cases));
}

/* No message may carry a secret: passwords, the URL, ACL strings, file contents. */
static void test_errors_never_show_secrets(void **state)
{
    (void)state;
    char path[512];
    write_file(path, sizeof path, "secret-nul.txt", "TOPSECRET\0\n", 11);
    static const char *const cases[] = {
        "upstream:\n  url: rediss://u:TOPSECRET@h:99999\n",
        "upstream:\n  url: redis://u:TOPSECRET@h\n",
        "upstream:\n  url: http://u:TOPSECRET@h\n",
        "upstream:\n  url: rediss://u:TOPSECRET%zz@h\n",
        "upstream:\n  url: rediss://u:TOPSECRET@h/5\n",
        "upstream:\n  url: rediss://u:TOPSECRET@h?insecure=1\n",
        "upstream:\n  url: rediss://u:TOPSECRET@[zz]\n",
        "upstream:\n  url: rediss://u:TOPSECRET@h\n  password_file: @DATA@/password.txt\n",
        "upstream:\n  url: \"${RG_TEST_SECRET_URL}\"\n",
        "upstream:\n  url: \"rediss://:TOPSECRET${RG_TEST_UNSET}@h\"\n",
        "upstream:\n  url: \"rediss://:TOPSECRET${bad name}@h\"\n",
        "upstream:\n  url: \"rediss://:TOPSECRET${OPEN@h\"\n",
        "upstream:\n  url: rediss://h\n  credentials: {ro: {password: TOPSECRET, username: ''}}\n",
        "upstream:\n  url: rediss://h\n  credentials: {ro: {password: TOPSECRET, pw: x}}\n",
        "upstream:\n  url: rediss://h\n  password_file: secret-nul.txt\n",
        "users:\n  web: \"on >TOPSECRET ~*\"\n",
        "users:\n  web:\n    acl: \"on >TOPSECRET ~*\"\n    acl_file: x\n",
        "users:\n  web:\n    acl: \"on >TOPSECRET ~*\"\n    upstream_credential: nope\n" UP L,
        "users:\n  web:\n    acl: \"on >TOPSECRET ~*\"\n    expires: never\n",
        "users:\n  web:\n    acl: [\"on >TOPSECRET ~*\"]\n",
        "users:\n  web:\n    acl: \"on >TOPSECRET ~* \\0\"\n",
        "users:\n  web:\n    acl: \"on >TOPSECRET ~*\"\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char err[1024], p[512];
        struct config *c = NULL;
        int rc = load_text(cases[i], &c, err, sizeof err, p, sizeof p);
        if (rc >= 0 || strstr(err, "TOPSECRET") || err[0] == '\0')
            print_error("case %zu: rc %d: %s\n", i, rc, err);
        assert_true(rc < 0);
        assert_null(c);
        assert_null(strstr(err, "TOPSECRET"));
        assert_null(strstr(err, "rediss://u"));
        assert_null(strstr(err, "pa$$word")); /* the content of password.txt */
    }
}

static void test_missing_config_file(void **state)
{
    (void)state;
    char err[512];
    struct config *c = (struct config *)&c;
    assert_int_equal(config_load("/nonexistent/respguard.yaml", &c, err, sizeof err), -ENOENT);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/respguard.yaml:1:1: cannot read the configuration "
                             "file: No such file or directory");
    assert_int_equal(config_load(DATA, &c, err, sizeof err), -EISDIR);
    assert_string_equal(err, DATA ":1:1: cannot read the configuration file: Is a directory");
    assert_int_equal(config_load(NULL, &c, err, sizeof err), -EINVAL);
    config_free(NULL);
}

/* A short buffer is cut, never overrun; no buffer at all is fine too. */
static void test_error_buffers(void **state)
{
    (void)state;
    char err[16], path[512];
    struct config *c = NULL;
    memset(err, 'x', sizeof err);
    assert_int_equal(load_text("bogus: 1\n", &c, err, 10, path, sizeof path), -EINVAL);
    assert_int_equal(strlen(err), 9);
    assert_int_equal(err[10], 'x');
    assert_int_equal(load_text("bogus: 1\n", &c, NULL, 0, path, sizeof path), -EINVAL);
    assert_int_equal(load_text("bogus: 1\n", &c, err, 0, path, sizeof path), -EINVAL);
    assert_null(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Addresses, durations, sizes                                                              */
/* ---------------------------------------------------------------------------------------- */

static void test_parse_cidr(void **state)
{
    (void)state;
    struct config_cidr c;
    char text[INET6_ADDRSTRLEN];

    assert_int_equal(config_parse_cidr("10.1.2.3/8", &c), 0);
    assert_int_equal(c.net.ss_family, AF_INET);
    assert_int_equal(c.prefix, 8);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&c.net)->sin_addr, text, sizeof text);
    assert_string_equal(text, "10.0.0.0"); /* host bits zeroed */

    assert_int_equal(config_parse_cidr("192.168.1.77/27", &c), 0);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&c.net)->sin_addr, text, sizeof text);
    assert_string_equal(text, "192.168.1.64");

    assert_int_equal(config_parse_cidr("127.0.0.1", &c), 0);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(config_parse_cidr("0.0.0.0/0", &c), 0);
    assert_int_equal(c.prefix, 0);

    assert_int_equal(config_parse_cidr("::1", &c), 0);
    assert_int_equal(c.net.ss_family, AF_INET6);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(config_parse_cidr("2001:db8:abcd:12ff::1/57", &c), 0);
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c.net)->sin6_addr, text, sizeof text);
    assert_string_equal(text, "2001:db8:abcd:1280::");
    assert_int_equal(c.prefix, 57);

    static const char *const bad[] = {
        "",           "/8",          "10.0.0.0/",    "10.0.0.0/33", "10.0.0.0/-1",
        "10.0.0.0/+8", "10.0.0.0/8x", "10.0.0/8",    "10.0.0.256",  "::1/129",
        "::1/0128",   "fe80::1%eth0", "localhost",   "10.0.0.0 /8", " 10.0.0.0/8",
        "10.0.0.0/8/8", "1.2.3.4/ 8", "0x0a.0.0.0/8", "[::1]/128",  "::1/1280",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        if (config_parse_cidr(bad[i], &c) != -EINVAL)
            fail_msg("'%s' accepted", bad[i]);
    }
    assert_int_equal(config_parse_cidr(NULL, &c), -EINVAL);
}

static void test_cidr_match(void **state)
{
    (void)state;
    struct config_cidr items[4];
    struct config_cidr_list l = {items, 0};
    struct sockaddr_storage a;

    /* Empty list: everyone. */
    a = sa("8.8.8.8");
    assert_true(config_cidr_match(&l, (struct sockaddr *)&a));
    assert_true(config_cidr_match(NULL, (struct sockaddr *)&a));

    assert_int_equal(config_parse_cidr("10.0.0.0/8", &items[0]), 0);
    assert_int_equal(config_parse_cidr("192.168.1.64/27", &items[1]), 0);
    assert_int_equal(config_parse_cidr("2001:db8::/33", &items[2]), 0);
    assert_int_equal(config_parse_cidr("::1", &items[3]), 0);
    l.count = 4;

    static const struct {
        const char *addr;
        bool match;
    } cases[] = {
        {"10.0.0.1", true},           {"10.255.255.255", true},   {"11.0.0.0", false},
        {"9.255.255.255", false},     {"192.168.1.64", true},     {"192.168.1.95", true},
        {"192.168.1.96", false},      {"192.168.1.63", false},    {"2001:db8::1", true},
        {"2001:db8:7fff::1", true},   {"2001:db8:8000::", false}, {"2001:db9::", false},
        {"::1", true},                {"::2", false},             {"::ffff:10.1.2.3", true},
        {"::ffff:11.1.2.3", false},   {"127.0.0.1", false},       {"::10.1.2.3", false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        a = sa(cases[i].addr);
        if (config_cidr_match(&l, (struct sockaddr *)&a) != cases[i].match)
            fail_msg("%s: expected %s", cases[i].addr, cases[i].match ? "match" : "no match");
    }
    assert_false(config_cidr_match(&l, NULL));
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_false(config_cidr_match(&l, &un));

    /* /0 matches its whole family; a v6 range sees v4 clients as ::ffff:a.b.c.d. */
    assert_int_equal(config_parse_cidr("0.0.0.0/0", &items[0]), 0);
    l.count = 1;
    a = sa("203.0.113.9");
    assert_true(config_cidr_match(&l, (struct sockaddr *)&a));
    a = sa("2001:db8::1");
    assert_false(config_cidr_match(&l, (struct sockaddr *)&a));
    assert_int_equal(config_parse_cidr("::ffff:0:0/96", &items[0]), 0);
    a = sa("203.0.113.9");
    assert_true(config_cidr_match(&l, (struct sockaddr *)&a));
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t ms;
    } good[] = {
        {"5s", 5000}, {"250ms", 250}, {"2m", 120000}, {"1h", 3600000}, {"7", 7000},
        {"0", 0},     {"0ms", 0},     {"007s", 7000}, {"18446744073709551615ms", UINT64_MAX},
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        uint64_t ms = 1;
        assert_int_equal(config_parse_duration(good[i].text, &ms), 0);
        assert_true(ms == good[i].ms);
    }
    static const char *const bad[] = {"", "s", "5 s", " 5s", "5s ", "5S", "-5s", "+5s", "1.5s",
                                      "5d", "5sec", "ms", "5ms5", "0x10", "5m s"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        uint64_t ms;
        if (config_parse_duration(bad[i], &ms) != -EINVAL)
            fail_msg("'%s' accepted", bad[i]);
    }
    uint64_t ms;
    assert_int_equal(config_parse_duration("18446744073709551616ms", &ms), -ERANGE);
    assert_int_equal(config_parse_duration("18446744073709551615s", &ms), -ERANGE);
    assert_int_equal(config_parse_duration("5124095576030432h", &ms), -ERANGE);
    assert_int_equal(config_parse_duration(NULL, &ms), -EINVAL);
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"100", 100},           {"0", 0},
        {"512kb", 512 << 10},   {"512KB", 512 << 10},
        {"512k", 512 << 10},    {"10mb", 10 << 20},
        {"10Mb", 10 << 20},     {"10M", 10 << 20},
        {"1gb", 1ull << 30},    {"3G", 3ull << 30},
        {"42b", 42},            {"17179869183gb", 17179869183ull << 30},
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        uint64_t b = 1;
        assert_int_equal(config_parse_size(good[i].text, &b), 0);
        assert_true(b == good[i].bytes);
    }
    static const char *const bad[] = {"", "mb", "10 mb", "10mib", "10tb", "-1", "1.5mb", "10xb",
                                      " 1", "1 ", "10kbb", "0x10"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        uint64_t b;
        if (config_parse_size(bad[i], &b) != -EINVAL)
            fail_msg("'%s' accepted", bad[i]);
    }
    uint64_t b;
    assert_int_equal(config_parse_size("17179869184gb", &b), -ERANGE);
    assert_int_equal(config_parse_size("99999999999999999999", &b), -ERANGE);
}

/* ---------------------------------------------------------------------------------------- */
/* Reload: the keys that need a restart, watch and the files a configuration names          */
/* ---------------------------------------------------------------------------------------- */

/* The base of the restart-key cases: two listeners (the second TLS), an upstream with a password
 * in the URL, one user. Each case replaces a part of it. */
#define RK_L0 "  - bind: 127.0.0.1:6379\n"
#define RK_L1 "  - bind: 0.0.0.0:6380\n    tls: {cert_file: a.crt, key_file: a.key}\n"
#define RK_LISTENERS "listeners:\n" RK_L0 RK_L1
#define RK_UP "upstream:\n  url: rediss://app:pw-one@redis.example:6390\n"
#define RK_US "users:\n  web: {acl: \"on >x ~* +@all\"}\n"
#define RK_BASE RK_LISTENERS RK_UP RK_US
#define RK_BASE_POOL(mode) RK_LISTENERS RK_UP "  pool: {mode: " mode "}\n" RK_US

/* config_restart_keys of two configurations loaded from yaml; the keys into out (outlen). */
static size_t restart_keys(const char *running_yaml, const char *next_yaml, char *out, size_t outlen)
{
    struct config *a = load_ok(running_yaml);
    struct config *b = load_ok(next_yaml);
    size_t n = config_restart_keys(a, b, out, outlen);
    config_free(a);
    config_free(b);
    return n;
}

/* Whether the comma-separated lists a and b hold the same keys, each once (order aside). */
static bool same_key_set(const char *a, const char *b)
{
    char x[512], y[512];
    const char *keys[32];
    size_t n = 0;
    snprintf(x, sizeof x, "%s", a);
    for (char *save = NULL, *k = strtok_r(x, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(keys[i], k) == 0)
                return false; /* a key twice */
        if (n == ARRAY_SIZE(keys))
            return false;
        keys[n++] = k;
    }
    size_t m = 0;
    snprintf(y, sizeof y, "%s", b);
    for (char *save = NULL, *k = strtok_r(y, ",", &save); k; k = strtok_r(NULL, ",", &save), m++) {
        size_t i = 0;
        while (i < n && (keys[i] == NULL || strcmp(keys[i], k) != 0))
            i++;
        if (i == n)
            return false;
        keys[i] = NULL;
    }
    return m == n;
}

struct restart_case {
    const char *name;
    const char *running, *next;
    size_t count;
    const char *keys; /* comma-separated, in any order */
};

static void run_restart_cases(const struct restart_case *cases, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        char out[512];
        memset(out, 'x', sizeof out);
        size_t got = restart_keys(cases[i].running, cases[i].next, out, sizeof out);
        if (got != cases[i].count || memchr(out, '\0', sizeof out) == NULL ||
            !same_key_set(out, cases[i].keys)) {
            print_error("case '%s': got %zu '%.*s', want %zu '%s'\n", cases[i].name, got, 200,
                        out, cases[i].count, cases[i].keys);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

static void test_restart_keys_listeners(void **state)
{
    (void)state;
    static const struct restart_case cases[] = {
        {"same file", RK_BASE, RK_BASE, 0, ""},
        {"bind of listener 0", RK_BASE,
         "listeners:\n  - bind: 127.0.0.1:6479\n" RK_L1 RK_UP RK_US, 1, "listeners[0].bind"},
        {"bind of listener 1", RK_BASE,
         "listeners:\n" RK_L0 "  - bind: 0.0.0.0:6381\n    tls: {cert_file: a.crt, key_file: a.key}\n"
         RK_UP RK_US, 1, "listeners[1].bind"},
        {"IPv6 bind", RK_BASE,
         "listeners:\n  - bind: \"[::1]:6379\"\n" RK_L1 RK_UP RK_US, 1, "listeners[0].bind"},
        {"TLS turned on", RK_BASE,
         "listeners:\n  - bind: 127.0.0.1:6379\n    tls: {cert_file: b.crt, key_file: b.key}\n"
         RK_L1 RK_UP RK_US, 1, "listeners[0].tls"},
        {"TLS turned off", "listeners:\n  - bind: 127.0.0.1:6379\n    tls: {cert_file: b.crt, key_file: b.key}\n"
         RK_L1 RK_UP RK_US, RK_BASE, 1, "listeners[0].tls"},
        {"listener added", RK_BASE, "listeners:\n" RK_L0 RK_L1 "  - bind: 127.0.0.1:7000\n" RK_UP RK_US,
         1, "listeners[2]"},
        {"listener removed", RK_BASE, "listeners:\n" RK_L0 RK_UP RK_US, 1, "listeners[1]"},
        {"first listener removed: the second moves up", RK_BASE, "listeners:\n" RK_L1 RK_UP RK_US, 2,
         "listeners[0].bind,listeners[1]"},
        {"two listeners added", "listeners:\n" RK_L0 RK_UP RK_US,
         "listeners:\n" RK_L0 RK_L1 "  - bind: 127.0.0.1:7000\n" RK_UP RK_US, 2, "listeners[1],listeners[2]"},
        {"swapped", RK_BASE, "listeners:\n" RK_L1 RK_L0 RK_UP RK_US, 2,
         "listeners[0].bind,listeners[1].bind"},
        {"bind changed and one added", RK_BASE,
         "listeners:\n  - bind: 127.0.0.1:6479\n" RK_L1 "  - bind: 127.0.0.1:7000\n" RK_UP RK_US, 2,
         "listeners[0].bind,listeners[2]"},
        /* The same address written another way is the same bind. */
        {"localhost for 127.0.0.1", RK_BASE,
         "listeners:\n  - bind: localhost:6379\n" RK_L1 RK_UP RK_US, 0, ""},
        {"IPv6 written two ways", "listeners:\n  - bind: \"[::1]:6379\"\n" RK_L1 RK_UP RK_US,
         "listeners:\n  - bind: \"[0::1]:6379\"\n" RK_L1 RK_UP RK_US, 0, ""},
        /* What a reload applies: certificates, keys, client CAs, allow_from, user_from_cert. */
        {"certificate paths", RK_BASE,
         "listeners:\n" RK_L0
         "  - bind: 0.0.0.0:6380\n    tls: {cert_file: new.crt, key_file: new.key, client_ca_file: ca.pem}\n"
         RK_UP RK_US, 0, ""},
        {"client CA and user_from_cert",
         "listeners:\n" RK_L0 "  - bind: 0.0.0.0:6380\n    tls: {cert_file: a.crt, key_file: a.key, "
         "client_ca_file: ca.pem}\n" RK_UP RK_US,
         "listeners:\n" RK_L0 "  - bind: 0.0.0.0:6380\n    tls: {cert_file: a.crt, key_file: a.key, "
         "client_ca_file: ca2.pem, user_from_cert: cn}\n" RK_UP RK_US, 0, ""},
        {"allow_from", RK_BASE,
         "listeners:\n  - bind: 127.0.0.1:6379\n    allow_from: [127.0.0.0/8]\n"
         "  - bind: 0.0.0.0:6380\n    tls: {cert_file: a.crt, key_file: a.key}\n    allow_from: [10.0.0.0/8]\n"
         RK_UP RK_US, 0, ""},
    };
    run_restart_cases(cases, ARRAY_SIZE(cases));
}

static void test_restart_keys_upstream_admin(void **state)
{
    (void)state;
#define RK_URL(url) RK_LISTENERS "upstream:\n  url: " url "\n" RK_US
#define RK_ADMIN(admin) RK_BASE admin
    static const struct restart_case cases[] = {
        /* The URL's host and port need a restart, its credential does not. */
        {"host name in other case", RK_BASE, RK_URL("rediss://app:pw-one@REDIS.example:6390"), 0, ""},
        {"URL password", RK_BASE, RK_URL("rediss://app:pw-two@redis.example:6390"), 0, ""},
        {"URL user name", RK_BASE, RK_URL("rediss://other:pw-one@redis.example:6390"), 0, ""},
        {"URL credential dropped", RK_BASE, RK_URL("rediss://redis.example:6390/0"), 0, ""},
        {"URL host", RK_BASE, RK_URL("rediss://app:pw-one@redis2.example:6390"), 1, "upstream.url"},
        {"URL port", RK_BASE, RK_URL("rediss://app:pw-one@redis.example:6391"), 1, "upstream.url"},
        {"URL host and password", RK_BASE, RK_URL("rediss://app:pw-two@10.0.0.1:6390"), 1, "upstream.url"},
        {"URL IPv6 host", RK_BASE, RK_URL("\"rediss://app:pw-one@[2001:db8::1]:6390\""), 1, "upstream.url"},
        {"default port written out", RK_URL("rediss://h"), RK_URL("rediss://h:6379/"), 0, ""},
        {"password moved to password_file", RK_URL("rediss://:pw@h"),
         RK_LISTENERS "upstream:\n  url: rediss://h\n  password_file: rk-pw.txt\n" RK_US, 0, ""},
        {"the rest of upstream", RK_BASE,
         RK_LISTENERS "upstream:\n  url: rediss://app@redis.example:6390\n  password_file: rk-pw.txt\n"
         "  ca_file: up-ca.pem\n  server_name: other.example\n  connect_timeout: 2s\n"
         "  credentials:\n    ro: {username: u, password: p}\n"
         "  pool: {size: 8, min_idle: 1, idle_timeout: 1m, max_lifetime: 0, keepalive: 5s, acquire_timeout: 1s}\n"
         RK_US, 0, ""},
        {"pool mode", RK_BASE, RK_BASE_POOL("multiplex"), 1, "upstream.pool.mode"},
        {"pool mode back", RK_BASE_POOL("multiplex"), RK_BASE_POOL("session"), 1, "upstream.pool.mode"},
        {"pool mode written as its default", RK_BASE, RK_BASE_POOL("session"), 0, ""},
        /* admin */
        {"admin turned on", RK_BASE, RK_ADMIN("admin: {}\n"), 1, "admin"},
        {"admin turned on elsewhere", RK_BASE, RK_ADMIN("admin: {bind: 127.0.0.1:9200, probe_interval: 1s}\n"),
         1, "admin"},
        {"admin turned off", RK_ADMIN("admin:\n"), RK_BASE, 1, "admin"},
        {"admin default bind written out", RK_ADMIN("admin:\n"), RK_ADMIN("admin: {bind: 127.0.0.1:9121}\n"), 0,
         ""},
        {"admin.bind", RK_ADMIN("admin: {}\n"), RK_ADMIN("admin: {bind: 127.0.0.1:9200}\n"), 1, "admin.bind"},
        {"admin.probe_interval", RK_ADMIN("admin: {}\n"), RK_ADMIN("admin: {probe_interval: 1s}\n"), 1,
         "admin.probe_interval"},
        {"admin.probe_interval default written out", RK_ADMIN("admin: {}\n"),
         RK_ADMIN("admin: {probe_interval: 5s}\n"), 0, ""},
        {"admin.bind and probe_interval", RK_ADMIN("admin: {}\n"),
         RK_ADMIN("admin: {bind: \"[::1]:9121\", probe_interval: 250ms}\n"), 2, "admin.bind,admin.probe_interval"},
        {"admin.allow_from", RK_ADMIN("admin: {}\n"), RK_ADMIN("admin: {allow_from: [127.0.0.1]}\n"), 0, ""},
        /* Everything at once. */
        {"every restart key",
         RK_ADMIN("admin: {}\n"),
         "listeners:\n  - bind: 127.0.0.1:6479\n"
         "upstream:\n  url: rediss://app:pw-one@other.example:6390\n  pool: {mode: multiplex}\n" RK_US
         "admin: {bind: 127.0.0.1:9200, probe_interval: 1s}\n",
         6, "listeners[0].bind,listeners[1],upstream.url,upstream.pool.mode,admin.bind,admin.probe_interval"},
    };
#undef RK_URL
#undef RK_ADMIN
    /* rk-pw.txt is read by the password_file cases. */
    char path[512];
    write_text(path, sizeof path, "rk-pw.txt", "pw\n");
    run_restart_cases(cases, ARRAY_SIZE(cases));
}

/* Everything but the restart keys is applied by a reload: no restart. */
static void test_restart_keys_reloadable(void **state)
{
    (void)state;
    char path[512];
    write_text(path, sizeof path, "rk-acl.txt", "on >y ~* +@read\n");
    write_text(path, sizeof path, "rk-pw.txt", "pw\n");
    static const struct restart_case cases[] = {
        {"users", RK_BASE,
         RK_LISTENERS RK_UP "  credentials: {ro: {password_file: rk-pw.txt}}\n"
         "users:\n  web: {acl: \"on >z ~web:* +@read\", expires: 2030-01-01T00:00:00Z, allow_from: [10.0.0.0/8],"
         " rate_limit: {commands_per_second: 5}, anomaly: {min_rate: 50, disabled: yes}}\n"
         "  ops: {acl_file: rk-acl.txt, upstream_credential: ro}\n",
         0, ""},
        {"limits", RK_BASE,
         RK_BASE "limits:\n  max_clients: 5\n  max_request_bytes: 1mb\n  login_timeout: 1s\n"
                 "  rate_limit: {commands_per_second: 10}\n  login_lockout: {failures: 3}\n",
         0, ""},
        {"log, guard and anomaly", RK_BASE,
         RK_BASE "log: {level: debug, keys: yes}\nguard: {never_by_category: [flushall]}\n"
                 "anomaly: {enabled: no, half_life: 5m, min_rate: 1}\n",
         0, ""},
        {"watch turned on", RK_BASE, RK_BASE "watch: yes\n", 0, ""},
        {"watch turned off", RK_BASE "watch: true\n", RK_BASE, 0, ""},
    };
    run_restart_cases(cases, ARRAY_SIZE(cases));
}

/* The list is cut to fit any buffer, stays NUL-terminated and the count does not change. */
static void test_restart_keys_truncated(void **state)
{
    (void)state;
    struct config *a = load_ok(RK_BASE "admin: {}\n");
    struct config *b = load_ok("listeners:\n  - bind: 127.0.0.1:6479\n"
                               "upstream:\n  url: rediss://app:pw-one@other.example:6390\n"
                               "  pool: {mode: multiplex}\n" RK_US
                               "admin: {bind: 127.0.0.1:9200, probe_interval: 1s}\n");
    char full[512];
    size_t n = config_restart_keys(a, b, full, sizeof full);
    assert_int_equal(n, 6);
    size_t len = strlen(full);
    assert_true(len > 40);
    assert_true(same_key_set(full, "listeners[0].bind,listeners[1],upstream.url,upstream.pool.mode,"
                                   "admin.bind,admin.probe_interval"));

    /* No buffer: only the count. */
    assert_int_equal(config_restart_keys(a, b, NULL, 0), 6);
    char one = 'x';
    assert_int_equal(config_restart_keys(a, b, &one, 0), 6);
    assert_int_equal(one, 'x');

    /* Every size: an exactly sized heap buffer, so ASan sees a write past its end. */
    for (size_t size = 1; size <= len + 2; size++) {
        char *out = malloc(size);
        assert_non_null(out);
        memset(out, 'x', size);
        assert_int_equal(config_restart_keys(a, b, out, size), 6);
        size_t got = strnlen(out, size);
        if (got == size)
            fail_msg("size %zu: not NUL-terminated", size);
        if (strncmp(out, full, got) != 0)
            fail_msg("size %zu: '%s' is not a prefix of '%s'", size, out, full);
        if (size > len)
            assert_string_equal(out, full);
        free(out);
    }
    /* Nothing to restart: the buffer is emptied. */
    char out[8];
    memset(out, 'x', sizeof out);
    assert_int_equal(config_restart_keys(a, a, out, sizeof out), 0);
    assert_string_equal(out, "");
    config_free(a);
    config_free(b);
}

static void test_watch_key(void **state)
{
    (void)state;
    struct config *c = load_ok(RK_BASE);
    assert_false(c->watch);
    config_free(c);
    static const struct {
        const char *text;
        bool want;
    } values[] = {{"yes", true}, {"true", true}, {"YES", true}, {"no", false}, {"false", false}, {"False", false}};
    for (size_t i = 0; i < ARRAY_SIZE(values); i++) {
        char yaml[1024];
        snprintf(yaml, sizeof yaml, RK_BASE "watch: %s\n", values[i].text);
        c = load_ok(yaml);
        assert_int_equal(c->watch, values[i].want);
        config_free(c);
    }
#define L "listeners:\n  - bind: 127.0.0.1:6379\n" /* lines 1-2 */
#define UP "upstream:\n  url: rediss://h\n"       /* 2 lines */
#define US "users:\n  web:\n    acl: \"on\"\n"   /* 3 lines */
    static const struct err_case cases[] = {
        {"watch not a bool", L UP US "watch: maybe\n", "8:8: watch: expected yes, no, true or false"},
        {"watch twice", L UP US "watch: yes\nwatch: no\n", "9:1: duplicate key 'watch'"},
        {"watch in a section", L UP "  watch: yes\n" US, "5:3: unknown key 'watch' in upstream"},
    };
#undef L
#undef UP
#undef US
    run_errors(cases, ARRAY_SIZE(cases));
}

static bool has_file(const struct config *c, const char *file)
{
    for (size_t i = 0; i < c->file_count; i++)
        if (strcmp(c->files[i], file) == 0)
            return true;
    return false;
}

static void assert_files(const struct config *c, const char *const *want, size_t n)
{
    bool ok = c->file_count == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = strcmp(c->files[i], want[i]) == 0;
    if (!ok) {
        for (size_t i = 0; i < c->file_count; i++)
            print_error("  got [%zu] %s\n", i, c->files[i]);
        for (size_t i = 0; i < n; i++)
            print_error("  want [%zu] %s\n", i, want[i]);
        fail_msg("config.files differs");
    }
}

/* config.files: every file the configuration names, resolved, in the order of the file. */
static void test_config_files(void **state)
{
    (void)state;
    char path[512], t[512];
    /* Without a named file the list is empty. */
    struct config *c = load_ok("listeners:\n" RK_L0 "upstream: {url: \"rediss://:pw@h\"}\n" RK_US);
    assert_int_equal(c->file_count, 0);
    config_free(c);

    snprintf(t, sizeof t, "%s/sub", tmpdir);
    assert_true(mkdir(t, 0700) == 0 || errno == EEXIST);
    write_text(path, sizeof path, "up-pw.txt", "pw\n");
    write_text(path, sizeof path, "cred-b.txt", "pw-b\n");
    write_text(path, sizeof path, "sub/acl.txt", "on >x ~* +@all\n");
    c = load_ok("listeners:\n"
                "  - bind: 0.0.0.0:6380\n"
                "    tls: {cert_file: srv.crt, key_file: /etc/respguard/srv.key, client_ca_file: sub/ca.pem}\n"
                "  - bind: 127.0.0.1:6379\n"
                "  - bind: 0.0.0.0:6381\n"
                "    tls: {key_file: two.key, cert_file: \"@TMP@/two.crt\"}\n"
                "upstream:\n"
                "  url: rediss://default@h\n"
                "  password_file: up-pw.txt\n"
                "  ca_file: ../up-ca.pem\n"
                "  credentials:\n"
                "    a: {password: inline}\n"
                "    b: {username: u, password_file: \"@TMP@/cred-b.txt\"}\n"
                "users:\n"
                "  web: {acl_file: ./sub/acl.txt}\n"
                "  ops: {acl: \"on >y ~* +@all\"}\n"
                "watch: yes\n");
    assert_true(c->watch);
    char w[9][300];
    snprintf(w[0], sizeof w[0], "%s/srv.crt", tmpdir);
    snprintf(w[1], sizeof w[1], "/etc/respguard/srv.key");
    snprintf(w[2], sizeof w[2], "%s/sub/ca.pem", tmpdir);
    snprintf(w[3], sizeof w[3], "%s/two.key", tmpdir);
    snprintf(w[4], sizeof w[4], "%s/two.crt", tmpdir);
    snprintf(w[5], sizeof w[5], "%s/up-pw.txt", tmpdir);
    snprintf(w[6], sizeof w[6], "%s/../up-ca.pem", tmpdir);
    snprintf(w[7], sizeof w[7], "%s/cred-b.txt", tmpdir);
    snprintf(w[8], sizeof w[8], "%s/./sub/acl.txt", tmpdir);
    const char *want[9];
    for (size_t i = 0; i < 9; i++)
        want[i] = w[i];
    assert_files(c, want, 9);
    /* The snapshot's own fields hold the same resolved names. */
    assert_string_equal(c->listeners[0].tls.cert_file, w[0]);
    assert_string_equal(c->listeners[2].tls.cert_file, w[4]);
    assert_string_equal(c->upstream.ca_file, w[6]);
    /* The configuration file itself is config.path, not on the list. */
    assert_false(has_file(c, c->path));
    config_free(c);

    /* A configuration named by a relative path: its files are relative to the same directory. */
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    write_text(path, sizeof path, "sub/rel.yaml",
               "listeners:\n  - bind: 0.0.0.0:6380\n    tls: {cert_file: c.crt, key_file: /abs/k.key}\n"
               "upstream: {url: \"rediss://default@h\", password_file: ../up-pw.txt}\n"
               "users: {web: {acl_file: acl.txt}}\n");
    assert_int_equal(chdir(tmpdir), 0);
    char err[512];
    c = NULL;
    int rc = config_load("sub/rel.yaml", &c, err, sizeof err);
    if (rc == 0) {
        static const char *const rel[] = {"sub/c.crt", "/abs/k.key", "sub/../up-pw.txt", "sub/acl.txt"};
        if (c->file_count != ARRAY_SIZE(rel))
            rc = -1;
        for (size_t i = 0; rc == 0 && i < ARRAY_SIZE(rel); i++)
            if (strcmp(c->files[i], rel[i]) != 0)
                rc = -1;
        for (size_t i = 0; rc != 0 && i < c->file_count; i++)
            print_error("  got [%zu] %s\n", i, c->files[i]);
    } else {
        print_error("%s\n", err);
    }
    config_free(c);
    /* And in the working directory itself. */
    int rc2 = -1;
    c = NULL;
    if (chdir("sub") == 0 && config_load("rel.yaml", &c, err, sizeof err) == 0) {
        rc2 = c->file_count == 4 && strcmp(c->files[0], "c.crt") == 0 && strcmp(c->files[1], "/abs/k.key") == 0 &&
                      strcmp(c->files[2], "../up-pw.txt") == 0 && strcmp(c->files[3], "acl.txt") == 0
                  ? 0
                  : -1;
        for (size_t i = 0; rc2 != 0 && i < c->file_count; i++)
            print_error("  got [%zu] %s\n", i, c->files[i]);
    }
    config_free(c);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    assert_int_equal(rc2, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* rest: the Upstash-compatible REST listeners                                              */
/* ---------------------------------------------------------------------------------------- */

#define L "listeners:\n  - bind: 127.0.0.1:6379\n" /* lines 1-2 */
#define UP "upstream:\n  url: rediss://h\n"       /* 2 lines */
#define US "users:\n  web:\n    acl: \"on\"\n"   /* 3 lines */

static void assert_rest_defaults(const struct config_rest *r)
{
    assert_int_equal(r->max_request_bytes, 1u << 20);
    assert_int_equal(r->max_connections, 1000);
    assert_int_equal(r->request_timeout_ms, 10000);
    assert_int_equal(r->idle_timeout_ms, 60000);
    assert_int_equal(r->cors_count, 0);
    assert_null(r->cors_origins);
}

/* No rest key (or an empty list): no REST listener. One entry with a bind only: the defaults. */
static void test_rest_defaults(void **state)
{
    (void)state;
    struct config *c = load_ok(L UP US);
    assert_int_equal(c->rest_count, 0);
    assert_null(c->rest);
    config_free(c);
    c = load_ok(L UP US "rest: []\n");
    assert_int_equal(c->rest_count, 0);
    assert_null(c->rest);
    config_free(c);

    c = load_ok(L UP US "rest:\n  - bind: 127.0.0.1:8080\n");
    assert_int_equal(c->rest_count, 1);
    const struct config_rest *r = &c->rest[0];
    assert_string_equal(r->listen.bind, "127.0.0.1:8080");
    assert_string_equal(r->listen.host, "127.0.0.1");
    assert_int_equal(r->listen.port, 8080);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&r->listen.addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 8080);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    assert_false(r->listen.tls_enabled);
    assert_null(r->listen.tls.cert_file);
    assert_null(r->listen.tls.key_file);
    assert_null(r->listen.tls.client_ca_file);
    assert_int_equal(r->listen.allow_from.count, 0);
    assert_rest_defaults(r);
    /* rest is not a RESP listener and does not turn admin on. */
    assert_int_equal(c->listener_count, 1);
    assert_false(c->admin.enabled);
    assert_int_equal(c->file_count, 0);
    config_free(c);
}

/* Every key; several entries; IPv6 binds; rest before the other sections. */
static void test_rest_values(void **state)
{
    (void)state;
    struct config *c = load_ok("rest:\n"
                               "  - bind: 0.0.0.0:8443\n"
                               "    tls: {cert_file: rest.crt, key_file: /etc/respguard/rest.key}\n"
                               "    allow_from: [10.0.0.0/8, \"2001:db8::/32\"]\n"
                               "    cors:\n"
                               "      allowed_origins: [\"https://app.example.com\", \"http://localhost:3000\", "
                               "\"*\"]\n"
                               "    max_request_bytes: 64kb\n"
                               "    max_connections: 50\n"
                               "    request_timeout: 2s\n"
                               "    idle_timeout: 5m\n"
                               "  - bind: \"[::1]:8080\"\n"
                               "    cors: {allowed_origins: [\"*\"]}\n"
                               "  - bind: \"[2001:DB8::1]:443\"\n"
                               "    tls:\n      cert_file: v6.crt\n      key_file: v6.key\n"
                               "    cors: {allowed_origins: []}\n"
                               "    max_request_bytes: 1gb\n"
                               "    max_connections: 1000000\n"
                               "    request_timeout: 100ms\n"
                               "    idle_timeout: 24h\n"
                               "  - bind: localhost:9121\n" /* admin is off: its default port is free */
                               "    max_request_bytes: 1kb\n"
                               "    max_connections: 1\n"
                               "    request_timeout: 1h\n"
                               "    idle_timeout: 1s\n"
                               L UP US);
    assert_int_equal(c->rest_count, 4);
    char crt[512];
    snprintf(crt, sizeof crt, "%s/rest.crt", tmpdir);

    const struct config_rest *r = &c->rest[0];
    assert_string_equal(r->listen.bind, "0.0.0.0:8443");
    assert_string_equal(r->listen.host, "0.0.0.0");
    assert_int_equal(r->listen.port, 8443);
    assert_true(r->listen.tls_enabled);
    assert_string_equal(r->listen.tls.cert_file, crt); /* relative to the file */
    assert_string_equal(r->listen.tls.key_file, "/etc/respguard/rest.key");
    assert_null(r->listen.tls.client_ca_file);
    assert_false(r->listen.tls.user_from_cert_cn);
    assert_int_equal(r->listen.allow_from.count, 2);
    struct sockaddr_storage a = sa("10.9.8.7");
    assert_true(config_cidr_match(&r->listen.allow_from, (struct sockaddr *)&a));
    a = sa("2001:db8:ffff::1");
    assert_true(config_cidr_match(&r->listen.allow_from, (struct sockaddr *)&a));
    a = sa("192.168.0.1");
    assert_false(config_cidr_match(&r->listen.allow_from, (struct sockaddr *)&a));
    assert_int_equal(r->cors_count, 3);
    assert_string_equal(r->cors_origins[0], "https://app.example.com");
    assert_string_equal(r->cors_origins[1], "http://localhost:3000");
    assert_string_equal(r->cors_origins[2], "*");
    assert_int_equal(r->max_request_bytes, 64 << 10);
    assert_int_equal(r->max_connections, 50);
    assert_int_equal(r->request_timeout_ms, 2000);
    assert_int_equal(r->idle_timeout_ms, 300000);

    r = &c->rest[1];
    assert_string_equal(r->listen.bind, "[::1]:8080");
    assert_string_equal(r->listen.host, "::1");
    assert_false(r->listen.tls_enabled); /* plaintext on IPv6 loopback */
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&r->listen.addr;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 8080);
    assert_true(IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));
    assert_int_equal(r->cors_count, 1);
    assert_string_equal(r->cors_origins[0], "*");
    assert_int_equal(r->max_request_bytes, 1u << 20);
    assert_int_equal(r->max_connections, 1000);
    assert_int_equal(r->request_timeout_ms, 10000);
    assert_int_equal(r->idle_timeout_ms, 60000);

    r = &c->rest[2];
    assert_string_equal(r->listen.host, "2001:db8::1");
    assert_int_equal(r->listen.port, 443);
    assert_true(r->listen.tls_enabled);
    s6 = (const struct sockaddr_in6 *)&r->listen.addr;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(s6->sin6_addr.s6_addr[0], 0x20);
    assert_int_equal(s6->sin6_addr.s6_addr[15], 1);
    assert_int_equal(r->cors_count, 0); /* an empty list: no CORS */
    assert_int_equal(r->max_request_bytes, 1ull << 30);
    assert_int_equal(r->max_connections, 1000000);
    assert_int_equal(r->request_timeout_ms, 100);
    assert_int_equal(r->idle_timeout_ms, 86400000);

    r = &c->rest[3];
    assert_string_equal(r->listen.host, "127.0.0.1");
    assert_int_equal(r->listen.port, 9121);
    assert_int_equal(r->max_request_bytes, 1024);
    assert_int_equal(r->max_connections, 1);
    assert_int_equal(r->request_timeout_ms, 3600000);
    assert_int_equal(r->idle_timeout_ms, 1000);

    /* The rest of the file is unchanged by a rest section before it. */
    assert_int_equal(c->listener_count, 1);
    assert_int_equal(c->listeners[0].port, 6379);
    assert_string_equal(c->upstream.host, "h");
    assert_int_equal(c->user_count, 1);
    config_free(c);

    /* Plaintext on any loopback address, v4 or v4-mapped; the same address on another port, and
     * another loopback address on the same port, are other sockets. */
    c = load_ok(L UP US "admin: {}\n"
                "rest:\n"
                "  - bind: 127.0.0.2:6379\n"
                "  - bind: 127.0.0.1:6380\n"
                "  - bind: \"[::ffff:127.0.0.1]:8080\"\n"
                "  - bind: 127.0.0.1:9122\n");
    assert_int_equal(c->rest_count, 4);
    assert_string_equal(c->rest[0].listen.host, "127.0.0.2");
    assert_string_equal(c->rest[2].listen.host, "::ffff:127.0.0.1");
    assert_false(c->rest[2].listen.tls_enabled);
    assert_true(c->admin.enabled);
    for (size_t i = 0; i < c->rest_count; i++)
        assert_rest_defaults(&c->rest[i]);
    config_free(c);
}

static void test_errors_rest(void **state)
{
    (void)state;
#define R L UP US "rest:\n" /* the list's items start on line 9 */
#define ORIGIN "expected an origin like https://app.example.com (scheme and host, no path) or \"*\""
#define PLAIN(bind) "plaintext rest listener on non-loopback address " bind " is refused: add tls or bind to 127.0.0.1"
    static const struct err_case cases[] = {
        /* The list and its items. */
        {"rest a mapping", L UP US "rest: {bind: 127.0.0.1:8080}\n", "8:7: rest: expected a list, found a mapping"},
        {"rest a scalar", L UP US "rest: 127.0.0.1:8080\n", "8:7: rest: expected a list, found a single value"},
        {"rest null", L UP US "rest:\n", "8:6: rest: expected a list, found a single value"},
        {"rest twice", L UP US "rest: []\nrest: []\n", "9:1: duplicate key 'rest'"},
        {"item a scalar", R "  - 127.0.0.1:8080\n", "9:5: rest[0]: expected a mapping, found a single value"},
        {"item a list", R "  - [127.0.0.1:8080]\n", "9:5: rest[0]: expected a mapping, found a list"},
        {"second item a scalar", R "  - bind: 127.0.0.1:8080\n  - x\n",
         "10:5: rest[1]: expected a mapping, found a single value"},
        {"unknown key", R "  - bind: 127.0.0.1:8080\n    port: 8080\n", "10:5: unknown key 'port' in rest[0]"},
        {"unknown key token", R "  - bind: 127.0.0.1:8080\n    token: x\n", "10:5: unknown key 'token' in rest[0]"},
        {"unknown key in the second", R "  - bind: 127.0.0.1:8080\n  - {bind: 127.0.0.1:8081, max_body: 1}\n",
         "10:28: unknown key 'max_body' in rest[1]"},
        {"duplicate key", R "  - bind: 127.0.0.1:8080\n    bind: 127.0.0.1:8081\n",
         "10:5: duplicate key 'bind' in rest[0]"},
        {"missing bind", R "  - max_connections: 5\n", "9:5: missing required key 'bind' in rest[0]"},
        {"missing bind, empty item", R "  - {}\n", "9:5: missing required key 'bind' in rest[0]"},
        {"bind empty", R "  - bind: \"\"\n", "9:11: rest[0].bind: empty value"},
        {"bind null", R "  - bind: ~\n", "9:11: rest[0].bind: missing value"},
        {"bind no port", R "  - bind: 127.0.0.1\n",
         "9:11: rest[0].bind: expected host:port with a numeric IPv4 address, [IPv6]:port or localhost:port"},
        {"bind host name", R "  - bind: example.com:8080\n",
         "9:11: rest[0].bind: expected host:port with a numeric IPv4 address, [IPv6]:port or localhost:port"},
        {"bind unbracketed v6", R "  - bind: ::1:8080\n",
         "9:11: rest[0].bind: write an IPv6 address in brackets, like [::1]:6379"},
        {"bind port 0", R "  - bind: 127.0.0.1:0\n", "9:11: rest[0].bind: the port must be a number from 1 to 65535"},
        {"bind of the second", R "  - bind: 127.0.0.1:8080\n  - bind: 127.0.0.1:65536\n",
         "10:11: rest[1].bind: the port must be a number from 1 to 65535"},

        /* Plaintext only on loopback. */
        {"plaintext 0.0.0.0", R "  - bind: 0.0.0.0:8080\n", "9:11: " PLAIN("0.0.0.0:8080")},
        {"plaintext [::]", R "  - bind: \"[::]:8080\"\n", "9:11: " PLAIN("[::]:8080")},
        {"plaintext public v6", R "  - bind: \"[2001:db8::1]:8080\"\n", "9:11: " PLAIN("[2001:db8::1]:8080")},
        {"plaintext with allow_from", R "  - bind: 10.1.2.3:8080\n    allow_from: [10.0.0.0/8]\n",
         "9:11: " PLAIN("10.1.2.3:8080")},
        {"plaintext second", R "  - bind: 127.0.0.1:8080\n  - bind: 192.168.1.1:8080\n",
         "10:11: " PLAIN("192.168.1.1:8080")},
        {"plaintext v4-mapped public", R "  - bind: \"[::ffff:10.0.0.1]:8080\"\n",
         "9:11: " PLAIN("[::ffff:10.0.0.1]:8080")},

        /* tls: cert_file and key_file only. */
        {"client_ca_file", R "  - bind: 0.0.0.0:8443\n    tls: {cert_file: a, key_file: b, client_ca_file: c}\n",
         "10:10: rest[0].tls: client certificates are not supported on rest listeners (the token is the "
         "credential): remove client_ca_file"},
        {"client_ca_file block", R "  - bind: 127.0.0.1:8443\n    tls:\n      client_ca_file: c\n"
         "      cert_file: a\n      key_file: b\n",
         "11:7: rest[0].tls: client certificates are not supported on rest listeners (the token is the "
         "credential): remove client_ca_file"},
        {"user_from_cert", R "  - bind: 0.0.0.0:8443\n    tls: {cert_file: a, key_file: b, user_from_cert: cn}\n",
         "10:38: rest[0].tls: user_from_cert needs client_ca_file (only a verified client certificate can "
         "name a user)"},
        {"tls missing key_file", R "  - bind: 0.0.0.0:8443\n    tls: {cert_file: a}\n",
         "10:10: missing required key 'key_file' in rest[0].tls"},
        {"tls not a mapping", R "  - bind: 0.0.0.0:8443\n    tls: yes\n",
         "10:10: rest[0].tls: expected a mapping, found a single value"},
        {"tls unknown key", R "  - bind: 0.0.0.0:8443\n    tls: {cert_file: a, key_file: b, ciphers: x}\n",
         "10:38: unknown key 'ciphers' in rest[0].tls"},
        {"tls empty cert name", R "  - bind: 0.0.0.0:8443\n    tls: {cert_file: '', key_file: b}\n",
         "10:22: rest[0].tls.cert_file: empty file name"},

        /* allow_from */
        {"allow_from empty", R "  - bind: 127.0.0.1:8080\n    allow_from: []\n",
         "10:17: rest[0].allow_from: empty list (remove the key to allow every address)"},
        {"allow_from bad", R "  - bind: 127.0.0.1:8080\n    allow_from: [10.0.0.0/8, 10.0.0.300]\n",
         "10:30: rest[0].allow_from[1]: invalid address or CIDR range '10.0.0.300'"},

        /* cors */
        {"cors without allowed_origins", R "  - bind: 127.0.0.1:8080\n    cors: {}\n",
         "10:11: missing required key 'allowed_origins' in rest[0].cors"},
        {"cors null", R "  - bind: 127.0.0.1:8080\n    cors:\n",
         "10:10: rest[0].cors: expected a mapping, found a single value"},
        {"cors a scalar", R "  - bind: 127.0.0.1:8080\n    cors: \"*\"\n",
         "10:11: rest[0].cors: expected a mapping, found a single value"},
        {"cors unknown key", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins: [\"*\"]\n"
         "      allow_credentials: yes\n",
         "12:7: unknown key 'allow_credentials' in rest[0].cors"},
        {"allowed_origins a scalar", R "  - bind: 127.0.0.1:8080\n    cors: {allowed_origins: \"*\"}\n",
         "10:29: rest[0].cors.allowed_origins: expected a list of origins, found a single value"},
        {"origin a list", R "  - bind: 127.0.0.1:8080\n    cors: {allowed_origins: [[\"*\"]]}\n",
         "10:30: rest[0].cors.allowed_origins[0]: expected a single value, found a list"},
        {"origin null", R "  - bind: 127.0.0.1:8080\n    cors: {allowed_origins: [\"*\", ~]}\n",
         "10:35: rest[0].cors.allowed_origins[1]: missing value"},
        {"origin without a scheme", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - app.example.com\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin other scheme", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - https://ok.example.com\n        - ftp://app.example.com\n",
         "13:11: rest[0].cors.allowed_origins[1]: " ORIGIN},
        {"origin with a trailing slash", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - https://app.example.com/\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin with a path", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - https://app.example.com/app\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin with a query", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - https://app.example.com?x=1\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin with user info", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - https://user:pw@app.example.com\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin with a wildcard host", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - http://*\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin scheme only", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - \"https://\"\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin empty", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n        - \"\"\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"two origins in one", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - \"https://a.example.com, https://b.example.com\"\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin with a space", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - \"https://a.example.com \"\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin wildcard subdomain", R "  - bind: 127.0.0.1:8080\n    cors:\n      allowed_origins:\n"
         "        - \"*.example.com\"\n",
         "12:11: rest[0].cors.allowed_origins[0]: " ORIGIN},
        {"origin in the second entry", R "  - bind: 127.0.0.1:8080\n  - bind: 127.0.0.1:8081\n"
         "    cors: {allowed_origins: [example.com]}\n",
         "11:30: rest[1].cors.allowed_origins[0]: " ORIGIN},

        /* Sizes, counts and durations. */
        {"max_request_bytes below 1kb", R "  - bind: 127.0.0.1:8080\n    max_request_bytes: 1023\n",
         "10:24: rest[0].max_request_bytes: expected a size from 1kb to 1gb, like 512kb, 10mb or 1gb"},
        {"max_request_bytes 0", R "  - bind: 127.0.0.1:8080\n    max_request_bytes: 0\n",
         "10:24: rest[0].max_request_bytes: expected a size from 1kb to 1gb, like 512kb, 10mb or 1gb"},
        {"max_request_bytes above 1gb", R "  - bind: 127.0.0.1:8080\n    max_request_bytes: 1025mb\n",
         "10:24: rest[0].max_request_bytes: expected a size from 1kb to 1gb, like 512kb, 10mb or 1gb"},
        {"max_request_bytes unit", R "  - bind: 127.0.0.1:8080\n    max_request_bytes: 1mib\n",
         "10:24: rest[0].max_request_bytes: expected a size from 1kb to 1gb, like 512kb, 10mb or 1gb"},
        {"max_connections 0", R "  - bind: 127.0.0.1:8080\n    max_connections: 0\n",
         "10:22: rest[0].max_connections: expected a whole number from 1 to 1000000"},
        {"max_connections too many", R "  - bind: 127.0.0.1:8080\n    max_connections: 1000001\n",
         "10:22: rest[0].max_connections: expected a whole number from 1 to 1000000"},
        {"request_timeout below 100ms", R "  - bind: 127.0.0.1:8080\n    request_timeout: 99ms\n",
         "10:22: rest[0].request_timeout: expected a duration from 100ms to 1h, like 250ms, 5s, 2m or 1h"},
        {"request_timeout above 1h", R "  - bind: 127.0.0.1:8080\n    request_timeout: 61m\n",
         "10:22: rest[0].request_timeout: expected a duration from 100ms to 1h, like 250ms, 5s, 2m or 1h"},
        {"idle_timeout below 1s", R "  - bind: 127.0.0.1:8080\n    idle_timeout: 999ms\n",
         "10:19: rest[0].idle_timeout: expected a duration from 1s to 24h, like 250ms, 5s, 2m or 1h"},
        {"idle_timeout 0", R "  - bind: 127.0.0.1:8080\n    idle_timeout: 0\n",
         "10:19: rest[0].idle_timeout: expected a duration from 1s to 24h, like 250ms, 5s, 2m or 1h"},
        {"idle_timeout above 24h", R "  - bind: 127.0.0.1:8080\n    idle_timeout: 25h\n",
         "10:19: rest[0].idle_timeout: expected a duration from 1s to 24h, like 250ms, 5s, 2m or 1h"},
        {"idle_timeout text", R "  - bind: 127.0.0.1:8080\n    idle_timeout: forever\n",
         "10:19: rest[0].idle_timeout: expected a duration from 1s to 24h, like 250ms, 5s, 2m or 1h"},

        /* One address, one socket: against listeners, other rest entries and admin.bind, in
         * whatever order the sections come. */
        {"bind of a listener", R "  - bind: 127.0.0.1:6379\n",
         "9:11: rest[0].bind: 127.0.0.1:6379 is already used by listeners[0]"},
        {"bind of a listener, written as localhost", R "  - bind: localhost:6379\n",
         "9:11: rest[0].bind: localhost:6379 is already used by listeners[0]"},
        {"bind of the second listener", "listeners:\n  - bind: 127.0.0.1:6379\n  - bind: \"[::]:6380\"\n"
         "    tls: {cert_file: a, key_file: b}\n" UP US "rest:\n  - bind: 127.0.0.1:8080\n"
         "  - bind: \"[0::0]:6380\"\n    tls: {cert_file: a, key_file: b}\n",
         "12:11: rest[1].bind: [0::0]:6380 is already used by listeners[1]"},
        {"rest before listeners", "rest:\n  - bind: 127.0.0.1:6379\n" L UP US,
         "2:11: rest[0].bind: 127.0.0.1:6379 is already used by listeners[0]"},
        {"rest before listeners, second entry", "rest:\n  - bind: 127.0.0.1:8080\n  - bind: localhost:6379\n" UP
         US L,
         "3:11: rest[1].bind: localhost:6379 is already used by listeners[0]"},
        {"bind of another rest entry", R "  - bind: 127.0.0.1:8080\n  - bind: localhost:8080\n",
         "10:11: rest[1].bind: localhost:8080 is already used by rest[0]"},
        {"bind of another rest entry, IPv6", R "  - bind: \"[::1]:8080\"\n  - bind: 127.0.0.1:8081\n"
         "  - bind: \"[0:0::1]:8080\"\n",
         "11:11: rest[2].bind: [0:0::1]:8080 is already used by rest[0]"},
        {"bind of another rest entry, TLS both", R "  - bind: 0.0.0.0:8443\n    tls: {cert_file: a, key_file: b}\n"
         "  - bind: 0.0.0.0:8443\n    tls: {cert_file: c, key_file: d}\n",
         "11:11: rest[1].bind: 0.0.0.0:8443 is already used by rest[0]"},
        {"bind of admin (default)", L UP US "admin: {}\nrest:\n  - bind: 127.0.0.1:9121\n",
         "10:11: rest[0].bind: 127.0.0.1:9121 is already used by admin.bind"},
        {"bind of admin, admin after rest", R "  - bind: 127.0.0.1:8080\n  - bind: \"[::1]:9200\"\n"
         "admin:\n  bind: \"[::1]:9200\"\n",
         "10:11: rest[1].bind: [::1]:9200 is already used by admin.bind"},
        {"bind of admin, rest first in the file", "rest:\n  - bind: localhost:9121\n" L UP US "admin:\n",
         "2:11: rest[0].bind: localhost:9121 is already used by admin.bind"},
        /* The first entry with a conflict is the one reported: rest[1] (with rest[0]) before
         * rest[2] (with a listener). */
        {"first conflicting entry", R "  - bind: 127.0.0.1:8080\n  - bind: 127.0.0.1:8080\n"
         "  - bind: 127.0.0.1:6379\n",
         "10:11: rest[1].bind: 127.0.0.1:8080 is already used by rest[0]"},
        /* Any other error, even later in the file, comes first: the binds are checked last. */
        {"bind conflict after another error", "rest:\n  - bind: 127.0.0.1:6379\n" L UP US "log: {level: x}\n",
         "10:14: log.level: expected debug, info, warn or error"},
    };
#undef R
#undef ORIGIN
#undef PLAIN
    run_errors(cases, ARRAY_SIZE(cases));
}

/* Which rest changes need a restart: a list entry added or removed, its address, TLS (on, off or
 * other files: the HTTP library takes them at start), the connection cap and the idle timeout. */
#define RK_R0 "  - bind: 127.0.0.1:8080\n"
#define RK_R0_TLS "  - bind: 127.0.0.1:8080\n    tls: {cert_file: r.crt, key_file: r.key}\n"
#define RK_R1 "  - bind: 0.0.0.0:8443\n    tls: {cert_file: r.crt, key_file: r.key}\n"
#define RK_REST(items) RK_BASE "rest:\n" items

static void test_restart_keys_rest(void **state)
{
    (void)state;
    static const struct restart_case cases[] = {
        {"same rest", RK_REST(RK_R0 RK_R1), RK_REST(RK_R0 RK_R1), 0, ""},
        {"no rest, then an empty list", RK_BASE, RK_BASE "rest: []\n", 0, ""},
        /* added, removed */
        {"rest added", RK_BASE, RK_REST(RK_R0), 1, "rest[0]"},
        {"rest removed", RK_REST(RK_R0), RK_BASE, 1, "rest[0]"},
        {"rest emptied", RK_REST(RK_R0 RK_R1), RK_BASE "rest: []\n", 2, "rest[0],rest[1]"},
        {"second added", RK_REST(RK_R0), RK_REST(RK_R0 RK_R1), 1, "rest[1]"},
        {"second removed", RK_REST(RK_R0 RK_R1), RK_REST(RK_R0), 1, "rest[1]"},
        {"first removed: the second moves up", RK_REST(RK_R0 RK_R1), RK_REST(RK_R1), 2, "rest[0].bind,rest[1]"},
        {"rest moved before listeners in the file", RK_REST(RK_R0),
         "rest:\n" RK_R0 RK_LISTENERS RK_UP RK_US, 0, ""},
        /* bind */
        {"bind port", RK_REST(RK_R0), RK_REST("  - bind: 127.0.0.1:8081\n"), 1, "rest[0].bind"},
        {"bind address", RK_REST(RK_R0), RK_REST("  - bind: 127.0.0.2:8080\n"), 1, "rest[0].bind"},
        {"bind IPv6", RK_REST(RK_R0), RK_REST("  - bind: \"[::1]:8080\"\n"), 1, "rest[0].bind"},
        {"bind of the second", RK_REST(RK_R0 RK_R1),
         RK_REST(RK_R0 "  - bind: \"[::]:8443\"\n    tls: {cert_file: r.crt, key_file: r.key}\n"), 1,
         "rest[1].bind"},
        {"bind as localhost", RK_REST(RK_R0), RK_REST("  - bind: localhost:8080\n"), 0, ""},
        {"bind IPv6 written two ways", RK_REST("  - bind: \"[::1]:8080\"\n"), RK_REST("  - bind: \"[0::1]:8080\"\n"),
         0, ""},
        {"swapped", RK_REST(RK_R0 RK_R1), RK_REST(RK_R1 RK_R0), 2, "rest[0].bind,rest[1].bind"},
        /* tls */
        {"tls turned on", RK_REST(RK_R0), RK_REST(RK_R0_TLS), 1, "rest[0].tls"},
        {"tls turned off", RK_REST(RK_R0_TLS), RK_REST(RK_R0), 1, "rest[0].tls"},
        /* Other certificate or key files are rotated in by a reload (rest.c), not a restart. */
        {"other cert_file", RK_REST(RK_R0 RK_R1),
         RK_REST(RK_R0 "  - bind: 0.0.0.0:8443\n    tls: {cert_file: r2.crt, key_file: r.key}\n"), 0, ""},
        {"other key_file", RK_REST(RK_R0_TLS),
         RK_REST("  - bind: 127.0.0.1:8080\n    tls: {cert_file: r.crt, key_file: /etc/r.key}\n"), 0, ""},
        {"the same files in the other order", RK_REST(RK_R0_TLS),
         RK_REST("  - bind: 127.0.0.1:8080\n    tls:\n      key_file: r.key\n      cert_file: r.crt\n"), 0, ""},
        {"the same file, relative and absolute", RK_REST(RK_R0_TLS),
         RK_REST("  - bind: 127.0.0.1:8080\n    tls: {cert_file: \"@TMP@/r.crt\", key_file: r.key}\n"), 0, ""},
        /* max_connections, idle_timeout */
        {"max_connections", RK_REST(RK_R0), RK_REST(RK_R0 "    max_connections: 10\n"), 1, "rest[0].max_connections"},
        {"max_connections default written out", RK_REST(RK_R0), RK_REST(RK_R0 "    max_connections: 1000\n"), 0,
         ""},
        {"idle_timeout", RK_REST(RK_R0), RK_REST(RK_R0 "    idle_timeout: 2m\n"), 1, "rest[0].idle_timeout"},
        {"idle_timeout default written out", RK_REST(RK_R0), RK_REST(RK_R0 "    idle_timeout: 60s\n"), 0, ""},
        {"idle_timeout of the second", RK_REST(RK_R0 RK_R1), RK_REST(RK_R0 RK_R1 "    idle_timeout: 1s\n"), 1,
         "rest[1].idle_timeout"},
        /* One key per entry, the first of bind, tls, max_connections, idle_timeout. */
        {"bind and tls", RK_REST(RK_R0), RK_REST("  - bind: 127.0.0.1:8081\n    tls: {cert_file: r.crt, key_file: r.key}\n"),
         1, "rest[0].bind"},
        {"tls and max_connections", RK_REST(RK_R0), RK_REST(RK_R0_TLS "    max_connections: 5\n"), 1, "rest[0].tls"},
        {"max_connections and idle_timeout", RK_REST(RK_R0),
         RK_REST(RK_R0 "    max_connections: 5\n    idle_timeout: 5s\n"), 1, "rest[0].max_connections"},
        {"each entry its key", RK_REST(RK_R0 RK_R1),
         RK_REST(RK_R0 "    idle_timeout: 5s\n"
                 "  - bind: 0.0.0.0:8443\n    tls: {cert_file: r.crt, key_file: r3.key}\n    max_connections: 2\n"),
         2, "rest[0].idle_timeout,rest[1].max_connections"},
        /* What a reload applies. */
        {"allow_from", RK_REST(RK_R0), RK_REST(RK_R0 "    allow_from: [127.0.0.0/8]\n"), 0, ""},
        {"cors", RK_REST(RK_R0), RK_REST(RK_R0 "    cors: {allowed_origins: [\"https://a.example\", \"*\"]}\n"), 0,
         ""},
        {"cors origins changed", RK_REST(RK_R0 "    cors: {allowed_origins: [\"https://a.example\"]}\n"),
         RK_REST(RK_R0 "    cors: {allowed_origins: [\"https://b.example\"]}\n"), 0, ""},
        {"max_request_bytes", RK_REST(RK_R0), RK_REST(RK_R0 "    max_request_bytes: 4kb\n"), 0, ""},
        {"request_timeout", RK_REST(RK_R0), RK_REST(RK_R0 "    request_timeout: 1s\n"), 0, ""},
        {"every reloadable key", RK_REST(RK_R1),
         RK_REST(RK_R1 "    allow_from: [10.0.0.0/8]\n    cors: {allowed_origins: [\"*\"]}\n"
                 "    max_request_bytes: 1gb\n    request_timeout: 1h\n"),
         0, ""},
        /* With the other restart keys. */
        {"rest and listeners", RK_BASE,
         "listeners:\n  - bind: 127.0.0.1:6479\n" RK_L1 RK_UP RK_US "rest:\n" RK_R0, 2, "listeners[0].bind,rest[0]"},
        {"rest and admin", RK_BASE "admin: {}\n", RK_REST(RK_R0 "    idle_timeout: 1s\n"), 2, "admin,rest[0]"},
    };
    run_restart_cases(cases, ARRAY_SIZE(cases));

    /* The exact text, in order: listeners, then rest (top-level table order), then admin's keys. */
    struct config *a = load_ok(RK_REST(RK_R0 RK_R1) "admin: {}\n");
    struct config *b = load_ok("listeners:\n" RK_L0 RK_UP RK_US "admin: {probe_interval: 1s}\n"
                               "rest:\n" RK_R0_TLS RK_R1 "  - bind: 127.0.0.1:9000\n");
    char out[256];
    assert_int_equal(config_restart_keys(a, b, out, sizeof out), 4);
    assert_string_equal(out, "listeners[1],rest[0].tls,rest[2],admin.probe_interval");
    config_free(a);
    config_free(b);
}

/* config.files holds the rest TLS files too, in the order of the file, each once. */
static void test_config_files_rest(void **state)
{
    (void)state;
    struct config *c = load_ok(L UP US "rest:\n" RK_R0 "    cors: {allowed_origins: [\"*\"]}\n");
    assert_int_equal(c->file_count, 0);
    config_free(c);

    char w[5][300];
    snprintf(w[0], sizeof w[0], "%s/rest.crt", tmpdir);
    snprintf(w[1], sizeof w[1], "/etc/respguard/rest.key");
    snprintf(w[2], sizeof w[2], "%s/srv.crt", tmpdir);
    snprintf(w[3], sizeof w[3], "%s/sub/v6.crt", tmpdir);
    snprintf(w[4], sizeof w[4], "%s/v6.key", tmpdir);

    /* rest first in the file: its files first. */
    c = load_ok("rest:\n"
                "  - bind: 0.0.0.0:8443\n"
                "    tls: {cert_file: rest.crt, key_file: /etc/respguard/rest.key}\n"
                "  - bind: 127.0.0.1:8080\n"
                "  - bind: \"[::]:8443\"\n"
                "    tls:\n      cert_file: sub/v6.crt\n      key_file: \"@TMP@/v6.key\"\n"
                "listeners:\n"
                "  - bind: 0.0.0.0:6380\n"
                "    tls: {cert_file: srv.crt, key_file: rest.crt}\n" /* rest.crt again: once */
                UP US);
    const char *want[] = {w[0], w[1], w[3], w[4], w[2]};
    assert_files(c, want, ARRAY_SIZE(want));
    /* The snapshot's own fields hold the same resolved names. */
    assert_string_equal(c->rest[0].listen.tls.cert_file, w[0]);
    assert_string_equal(c->rest[0].listen.tls.key_file, w[1]);
    assert_null(c->rest[1].listen.tls.cert_file);
    assert_string_equal(c->rest[2].listen.tls.cert_file, w[3]);
    assert_string_equal(c->rest[2].listen.tls.key_file, w[4]);
    config_free(c);

    /* rest after the listeners: after their files. */
    c = load_ok("listeners:\n"
                "  - bind: 0.0.0.0:6380\n"
                "    tls: {cert_file: srv.crt, key_file: rest.crt}\n"
                UP US
                "rest:\n"
                "  - bind: 0.0.0.0:8443\n"
                "    tls: {key_file: /etc/respguard/rest.key, cert_file: rest.crt}\n");
    const char *want2[] = {w[2], w[0], w[1]};
    assert_files(c, want2, ARRAY_SIZE(want2));
    config_free(c);
}

#undef L
#undef UP
#undef US

/* ---------------------------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/respguard-test-config-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    setenv("RG_TEST_UPSTREAM_PASSWORD", "up-secret", 1);
    setenv("RG_TEST_RO_PASSWORD", "ro-secret", 1);
    setenv("RG_TEST_WEB_PASSWORD", "web-secret", 1);
    setenv("RG_TEST_PORT", "7001", 1);
    setenv("RG_TEST_EMPTY", "", 1);
    setenv("RG_TEST_SECRET_URL", "redis://user:TOPSECRET@h:6379", 1);
    /* Referenced by config/example.yaml. */
    setenv("UPSTASH_REDIS_PASSWORD", "example-upstream", 1);
    setenv("UPSTASH_RO_PASSWORD", "example-ro", 1);
    setenv("OPS_PASSWORD", "example-ops", 1);
    unsetenv("RG_TEST_UNSET");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_file),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_env_expansion),
        cmocka_unit_test(test_secret_files),
        cmocka_unit_test(test_secret_file_at_cap),
        cmocka_unit_test(test_ipv6_binds),
        cmocka_unit_test(test_upstream_urls),
        cmocka_unit_test(test_guard_and_log),
        cmocka_unit_test(test_anomaly_defaults),
        cmocka_unit_test(test_anomaly_file),
        cmocka_unit_test(test_anomaly_overrides),
        cmocka_unit_test(test_errors_anomaly),
        cmocka_unit_test(test_enforcement_and_admin),
        cmocka_unit_test(test_errors_enforcement_and_admin),
        cmocka_unit_test(test_errors_top),
        cmocka_unit_test(test_errors_listeners),
        cmocka_unit_test(test_errors_upstream),
        cmocka_unit_test(test_pool_defaults),
        cmocka_unit_test(test_pool_values),
        cmocka_unit_test(test_errors_pool),
        cmocka_unit_test(test_errors_users),
        cmocka_unit_test(test_errors_sections),
        cmocka_unit_test(test_errors_values),
        cmocka_unit_test(test_errors_secret_files),
        cmocka_unit_test(test_errors_never_show_secrets),
        cmocka_unit_test(test_missing_config_file),
        cmocka_unit_test(test_error_buffers),
        cmocka_unit_test(test_parse_cidr),
        cmocka_unit_test(test_cidr_match),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_restart_keys_listeners),
        cmocka_unit_test(test_restart_keys_upstream_admin),
        cmocka_unit_test(test_restart_keys_reloadable),
        cmocka_unit_test(test_restart_keys_truncated),
        cmocka_unit_test(test_watch_key),
        cmocka_unit_test(test_config_files),
        cmocka_unit_test(test_rest_defaults),
        cmocka_unit_test(test_rest_values),
        cmocka_unit_test(test_errors_rest),
        cmocka_unit_test(test_restart_keys_rest),
        cmocka_unit_test(test_config_files_rest),
    };
    return cmocka_run_group_tests_name("config", tests, setup, teardown);
}
