/*
 * acl: compiles a user's ACL string into struct acl_user and answers login and "named command"
 * questions. Pure: it reads only its arguments. It never copies a clear-text password anywhere
 * but into the SHA-256 it computes, and error messages never repeat one.
 */
#include "respguard/acl.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_hash(const char *p, size_t n, uint8_t out[CRYPTO_SHA256_LEN])
{
    if (n != 2 * CRYPTO_SHA256_LEN)
        return -EINVAL;
    for (size_t i = 0; i < CRYPTO_SHA256_LEN; i++) {
        int hi = hexval((unsigned char)p[2 * i]), lo = hexval((unsigned char)p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int hash_add(struct acl_user *u, const uint8_t h[CRYPTO_SHA256_LEN])
{
    for (size_t i = 0; i < u->hash_count; i++)
        if (memcmp(u->hashes[i], h, CRYPTO_SHA256_LEN) == 0)
            return 0;
    void *n = realloc(u->hashes, (u->hash_count + 1) * sizeof *u->hashes);
    if (!n)
        return -ENOMEM;
    u->hashes = n;
    memcpy(u->hashes[u->hash_count++], h, CRYPTO_SHA256_LEN);
    return 0;
}

/* Returns 0 when removed, -ENOENT when the user had no such password (Redis reports that). */
static int hash_remove(struct acl_user *u, const uint8_t h[CRYPTO_SHA256_LEN])
{
    for (size_t i = 0; i < u->hash_count; i++) {
        if (memcmp(u->hashes[i], h, CRYPTO_SHA256_LEN) == 0) {
            memmove(u->hashes[i], u->hashes[i + 1], (u->hash_count - i - 1) * sizeof *u->hashes);
            u->hash_count--;
            return 0;
        }
    }
    return -ENOENT;
}

static void hashes_clear(struct acl_user *u)
{
    crypto_wipe(u->hashes, u->hash_count * sizeof *u->hashes);
    free(u->hashes);
    u->hashes = NULL;
    u->hash_count = 0;
}

static void named_clear(struct acl_user *u)
{
    for (size_t i = 0; i < u->named_count; i++)
        free(u->named[i].name);
    free(u->named);
    u->named = NULL;
    u->named_count = 0;
}

static int named_set(struct acl_user *u, const char *p, size_t n, bool allowed)
{
    char *name = strndup(p, n);
    if (!name)
        return -ENOMEM;
    for (char *c = name; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    for (size_t i = 0; i < u->named_count; i++) {
        if (strcmp(u->named[i].name, name) == 0) {
            u->named[i].allowed = allowed;
            free(name);
            return 0;
        }
    }
    /* "-cmd" also overrides earlier "+cmd|sub" mentions, as in Redis. */
    if (!allowed && !memchr(p, '|', n)) {
        size_t len = strlen(name);
        for (size_t i = 0; i < u->named_count; i++)
            if (strncmp(u->named[i].name, name, len) == 0 && u->named[i].name[len] == '|')
                u->named[i].allowed = false;
    }
    void *m = realloc(u->named, (u->named_count + 1) * sizeof *u->named);
    if (!m) {
        free(name);
        return -ENOMEM;
    }
    u->named = m;
    u->named[u->named_count].name = name;
    u->named[u->named_count].allowed = allowed;
    u->named_count++;
    return 0;
}

static int rules_append(struct acl_user *u, const char *p, size_t n, size_t *len, size_t *cap)
{
    if (*len + n + 2 > *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        while (c < *len + n + 2)
            c *= 2;
        char *r = realloc(u->rules, c);
        if (!r)
            return -ENOMEM;
        u->rules = r;
        *cap = c;
    }
    if (*len)
        u->rules[(*len)++] = ' ';
    memcpy(u->rules + *len, p, n);
    *len += n;
    u->rules[*len] = '\0';
    return 0;
}

static int fail(char *err, size_t errlen, const char *tok, size_t n, const char *why)
{
    /* Never echo a password: show only its marker. */
    if (n && (tok[0] == '>' || tok[0] == '<'))
        snprintf(err, errlen, "Error in ACL SETUSER modifier '%c***': %s", tok[0], why);
    else
        snprintf(err, errlen, "Error in ACL SETUSER modifier '%.*s': %s", (int)(n > 80 ? 80 : n), tok, why);
    return -EINVAL;
}

static bool token_is(const char *p, size_t n, const char *word)
{
    return strlen(word) == n && strncasecmp(p, word, n) == 0;
}

int acl_user_compile(const char *name, const char *rules, struct acl_user *out, char *err,
                     size_t errlen, size_t *err_offset)
{
    memset(out, 0, sizeof *out);
    out->name = strdup(name);
    if (!out->name)
        return -ENOMEM;
    size_t rlen = 0, rcap = 0;
    int rc = 0;
    const char *p = rules;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        const char *tok = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        size_t n = (size_t)(p - tok);
        *err_offset = (size_t)(tok - rules);
        uint8_t h[CRYPTO_SHA256_LEN];

        if (token_is(tok, n, "on")) {
            out->enabled = true;
        } else if (token_is(tok, n, "off")) {
            out->enabled = false;
        } else if (token_is(tok, n, "nopass")) {
            hashes_clear(out);
            out->nopass = true;
        } else if (token_is(tok, n, "resetpass")) {
            hashes_clear(out);
            out->nopass = false;
        } else if (token_is(tok, n, "reset")) {
            /* reset = resetpass resetkeys resetchannels off -@all */
            hashes_clear(out);
            out->nopass = false;
            out->enabled = false;
            named_clear(out);
            rlen = 0;
            if (out->rules)
                out->rules[0] = '\0';
            rc = rules_append(out, "resetkeys resetchannels -@all", 29, &rlen, &rcap);
        } else if (tok[0] == '>') {
            crypto_sha256(tok + 1, n - 1, h);
            rc = hash_add(out, h);
            out->nopass = false;
        } else if (tok[0] == '<') {
            crypto_sha256(tok + 1, n - 1, h);
            if (hash_remove(out, h) != 0)
                return fail(err, errlen, tok, n, "no such password");
        } else if (tok[0] == '#' || tok[0] == '!') {
            if (parse_hash(tok + 1, n - 1, h) != 0)
                return fail(err, errlen, tok, n, "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters");
            if (tok[0] == '#') {
                rc = hash_add(out, h);
                out->nopass = false;
            } else if (hash_remove(out, h) != 0) {
                return fail(err, errlen, tok, n, "no such password");
            }
        } else {
            if (n > 1 && (tok[0] == '+' || tok[0] == '-') && tok[1] != '@') {
                if (tok[1] == '|' || tok[n - 1] == '|')
                    return fail(err, errlen, tok, n, "Syntax error");
                rc = named_set(out, tok + 1, n - 1, tok[0] == '+');
            } else if (token_is(tok, n, "nocommands")) {
                named_clear(out);
            }
            if (rc == 0)
                rc = rules_append(out, tok, n, &rlen, &rcap);
        }
        if (rc)
            return rc;
    }
    if (!out->rules)
        rc = rules_append(out, "", 0, &rlen, &rcap);
    return rc;
}

void acl_user_deinit(struct acl_user *u)
{
    free(u->name);
    hashes_clear(u);
    named_clear(u);
    free(u->rules);
    memset(u, 0, sizeof *u);
}

bool acl_user_check_password(const struct acl_user *u, const char *password, size_t len)
{
    if (!u->enabled)
        return false;
    if (u->nopass)
        return true;
    uint8_t h[CRYPTO_SHA256_LEN];
    crypto_sha256(password, len, h);
    bool ok = false;
    for (size_t i = 0; i < u->hash_count; i++)
        ok |= crypto_equal(h, u->hashes[i], CRYPTO_SHA256_LEN);
    crypto_wipe(h, sizeof h);
    return ok;
}

static int named_lookup(const struct acl_user *u, const char *name)
{
    for (size_t i = 0; i < u->named_count; i++)
        if (strcmp(u->named[i].name, name) == 0)
            return u->named[i].allowed ? 1 : 0;
    return -1;
}

bool acl_user_names_command(const struct acl_user *u, const char *cmd, const char *sub)
{
    if (sub) {
        char full[128];
        int n = snprintf(full, sizeof full, "%s|%s", cmd, sub);
        if (n > 0 && (size_t)n < sizeof full) {
            int v = named_lookup(u, full);
            if (v >= 0)
                return v == 1;
        }
    }
    return named_lookup(u, cmd) == 1;
}

void acl_hash_password(const char *secret, size_t len, char out[66])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t h[CRYPTO_SHA256_LEN];
    crypto_sha256(secret, len, h);
    out[0] = '#';
    for (size_t i = 0; i < CRYPTO_SHA256_LEN; i++) {
        out[1 + 2 * i] = hex[h[i] >> 4];
        out[2 + 2 * i] = hex[h[i] & 15];
    }
    out[65] = '\0';
}
