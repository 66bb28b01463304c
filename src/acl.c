/*
 * acl: compiles a user's ACL rules (Redis 7.0's ACL SETUSER language) into bitmaps and pattern
 * lists, and judges commands against them: Redis's processCommand order and texts, then
 * respguard's documented differences (the table below).
 *
 * What it must not do: allocate, log or keep state in acl_check; copy a clear-text password
 * anywhere but into the SHA-256 it computes; repeat a password in an error message; treat an
 * argument as a C string except where Redis itself does (its error texts and strcasecmp
 * keywords stop at a NUL byte, and so do ours, on purpose).
 *
 * Documented differences from Redis's own ACL (the README's tables). They apply only after
 * Redis's own checks have passed, so wherever Redis refuses, respguard refuses with Redis's text
 * (one exception: INFO, below). Terms: "keys restricted" = neither allkeys nor a pattern "*" with
 * read and write; "reads restricted" = neither allkeys nor a pattern "*" with read; "a tenant" =
 * keys restricted or not allchannels (acl_user_is_tenant); "named" = granted by an explicit
 * +name (or a first-argument rule) still standing, not only by a category.
 * reason = acl_reason_name() for the audit log.
 *
 *   NOPERM this user has no permissions to run the '<name>' command
 *     guard     (everyone) a guard.never_by_category command granted only by a category
 *     server    (a tenant) a server-wide command (cmdtab_server_wide) not named, unless it has a
 *               treatment of its own below
 *     script    (a tenant) EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, FCALL, FCALL_RO, not named
 *     script-admin (a tenant) every FUNCTION and SCRIPT subcommand but HELP, not named
 *     migrate   (keys restricted) MIGRATE
 *     database  (keys restricted) SELECT of anything but "0", MOVE, SWAPDB (SWAPDB: server for
 *               other tenants)
 *     client    (a tenant) CLIENT LIST/KILL/PAUSE/UNPAUSE/UNBLOCK; CLIENT TRACKING with
 *               REDIRECT or BCAST ('client|tracking')
 *     monitor   (everyone) MONITOR, but for a user who is not a tenant and names it
 *   scoped forms (ACL_OK_SCOPED: the session answers in their place)
 *     INFO      for whoever is not granted the full INFO: a tenant that does not name it, and
 *               (the exception) a user whose rules do not allow INFO at all
 *     ACL WHOAMI for everyone Redis's rules allow it (the guard does not apply): the user's name
 *   NOPERM this user has no permissions to access one of the keys used as arguments
 *     enumeration (reads restricted) KEYS p, SCAN ... MATCH p, where p does not begin with the
 *               literal part of one of the user's readable prefix patterns ("lit*", no glob
 *               byte in lit); a SCAN without such a last MATCH is allowed when the user has
 *               exactly one such prefix pattern, with "MATCH <that pattern>" appended
 *               (ACL_OK_APPEND_MATCH), and refused otherwise
 *     database  (keys restricted) COPY ... DB n, n other than "0"
 *     key-extraction (keys restricted) the keys cannot be found (a key count that is not a
 *               canonical integer within the arguments, PFMERGE with one argument...): Redis
 *               finds no key and checks none
 *     too-many  (keys restricted) more keys than acl_check's stack room (use acl_check_ex)
 *   NOPERM this user has no permissions to access one of the channels used as arguments
 *     system-channel (a tenant) a PUBLISH/SUBSCRIBE channel beginning with __keyspace@,
 *               __keyevent@ or __redis__, a PSUBSCRIBE pattern that could match one, or such
 *               a PUBSUB CHANNELS/NUMSUB argument
 *     enumeration (a tenant) PUBSUB CHANNELS/SHARDCHANNELS without a pattern; (channels
 *               restricted) their pattern not one of the user's channel patterns, PUBSUB
 *               NUMSUB/SHARDNUMSUB of a channel outside them
 *     too-many  (channels restricted) more channels than acl_check's stack room
 *
 * Redis's own texts that Redis gives later than its ACL check, given here at once:
 *     sort      SORT/SORT_RO with GET, or BY with a pattern holding '*', for a user who cannot
 *               read every key: "ERR BY option of SORT denied due to insufficient ACL
 *               permissions." (GET likewise), as Redis's sortCommand answers (ACL DRYRUN: OK)
 *     EXEC refused: "EXECABORT Transaction discarded because of: <error>", as Redis does
 */
#include "respguard/acl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/glob.h"

/* ---------------------------------------------------------------------------------------- */
/* Bytes                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Case-insensitive equality of a token with a keyword (Redis's strcasecmp on a whole token). */
static bool token_is(const char *p, size_t n, const char *word)
{
    size_t i = 0;
    for (; i < n; i++)
        if (word[i] == '\0' || fold((unsigned char)p[i]) != fold((unsigned char)word[i]))
            return false;
    return word[i] == '\0';
}

/* strcasecmp(argument, word) == 0 as Redis sees it: the argument ends at its first NUL. */
static bool arg_is(const struct resp_arg *a, const char *word)
{
    size_t i = 0;
    for (; word[i] != '\0'; i++)
        if (i >= a->len || fold((unsigned char)a->ptr[i]) != fold((unsigned char)word[i]))
            return false;
    return i == a->len || a->ptr[i] == '\0';
}

/* The argument's length as a C string (up to its first NUL). */
static size_t cstr_len(const struct resp_arg *a)
{
    const char *z = memchr(a->ptr, '\0', a->len);
    return z ? (size_t)(z - a->ptr) : a->len;
}

/* Exactly "0": the only database a restricted user may name. */
static bool arg_is_zero(const struct resp_arg *a)
{
    return a->len == 1 && a->ptr[0] == '0';
}

/* A number as Redis's string2ll accepts it (resp_string2ll is the one rule for that). */
static bool valid_ll(const struct resp_arg *a)
{
    long long v;
    return resp_string2ll(a->ptr, a->len, &v);
}

/* ---------------------------------------------------------------------------------------- */
/* Bitmaps and command ids                                                                  */
/* ---------------------------------------------------------------------------------------- */

static bool bit_get(const uint64_t *b, uint32_t id)
{
    return (b[id >> 6] >> (id & 63)) & 1u;
}

static void bit_put(uint64_t *b, uint32_t id, bool v)
{
    if (v)
        b[id >> 6] |= 1ull << (id & 63);
    else
        b[id >> 6] &= ~(1ull << (id & 63));
}

static size_t words(const struct acl_user *u)
{
    return (u->id_count + 63) / 64;
}

static uint32_t cmd_id(const struct acl_user *u, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub)
{
    uint32_t t = (uint32_t)(top - cmdtab_commands);
    if (!sub)
        return t;
    return u->sub_base[t] + (uint32_t)(sub - top->subcommands);
}

/* Redis's lookupCommandBySds (strict): "cmd" or "cmd|sub", case-insensitive; more than one
 * '|', an unknown part, or a '|' after a command without subcommands: not found. */
static bool lookup_rule_name(const char *p, size_t n, const struct cmdtab_cmd **top, const struct cmdtab_cmd **sub)
{
    const char *bar = memchr(p, '|', n);
    *top = NULL;
    *sub = NULL;
    if (n == 0)
        return false;
    if (!bar) {
        *top = cmdtab_lookup(p, n);
        return *top != NULL;
    }
    size_t tn = (size_t)(bar - p);
    if (memchr(bar + 1, '|', n - tn - 1))
        return false;
    const struct cmdtab_cmd *t = cmdtab_lookup(p, tn);
    if (!t || !t->subcommands)
        return false;
    const struct cmdtab_cmd *s = cmdtab_lookup_sub(t, bar + 1, n - tn - 1);
    if (!s)
        return false;
    *top = t;
    *sub = s;
    return true;
}

/* ---------------------------------------------------------------------------------------- */
/* Special commands (the documented differences)                                             */
/* ---------------------------------------------------------------------------------------- */

enum special {
    SP_NONE = 0,
    SP_SCRIPT,
    SP_SCRIPT_ADMIN,
    SP_SORT,
    SP_SORT_RO,
    SP_MIGRATE,
    SP_KEYS,
    SP_SCAN,
    SP_SELECT,
    SP_DB,
    SP_COPY,
    SP_CLIENT,
    SP_TRACKING,
    SP_MONITOR,
    SP_PUBSUB_LIST,
    SP_SERVER, /* the server-wide class (cmdtab_server_wide) without a treatment of its own */
    SP_INFO,
    SP_WHOAMI,
};

static const struct {
    const char *name;
    uint8_t kind;
} specials[] = {
    {"eval", SP_SCRIPT},         {"evalsha", SP_SCRIPT},          {"eval_ro", SP_SCRIPT},
    {"evalsha_ro", SP_SCRIPT},   {"fcall", SP_SCRIPT},            {"fcall_ro", SP_SCRIPT},
    {"function", SP_SCRIPT_ADMIN}, {"script", SP_SCRIPT_ADMIN},   {"sort", SP_SORT},
    {"sort_ro", SP_SORT_RO},     {"migrate", SP_MIGRATE},         {"info", SP_INFO},
    {"acl|whoami", SP_WHOAMI},   {"keys", SP_KEYS},
    {"scan", SP_SCAN},           {"select", SP_SELECT},           {"move", SP_DB},
    {"swapdb", SP_DB},           {"copy", SP_COPY},               {"client|list", SP_CLIENT},
    {"client|kill", SP_CLIENT},  {"client|pause", SP_CLIENT},     {"client|unpause", SP_CLIENT},
    {"client|unblock", SP_CLIENT}, {"client|tracking", SP_TRACKING}, {"monitor", SP_MONITOR},
    {"pubsub|channels", SP_PUBSUB_LIST}, {"pubsub|shardchannels", SP_PUBSUB_LIST},
};

/* Fill the per-id kinds: a container's name applies to each of its subcommands but HELP. */
static void special_fill(struct acl_user *u)
{
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        const struct cmdtab_cmd *top, *sub;
        const char *n = specials[i].name;
        if (!lookup_rule_name(n, strlen(n), &top, &sub))
            continue; /* a table without it */
        if (sub || !top->subcommands) {
            u->special[cmd_id(u, top, sub)] = specials[i].kind;
            continue;
        }
        for (uint16_t j = 0; j < top->subcommand_count; j++) {
            const char *bar = strchr(top->subcommands[j].name, '|');
            if (!bar || strcmp(bar + 1, "help") != 0)
                u->special[cmd_id(u, top, &top->subcommands[j])] = specials[i].kind;
        }
    }
    /* The rest of the server-wide class: refused to tenants unless named. */
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const struct cmdtab_cmd *top = &cmdtab_commands[i];
        if (!top->subcommands) {
            if (cmdtab_server_wide(top) && u->special[cmd_id(u, top, NULL)] == SP_NONE)
                u->special[cmd_id(u, top, NULL)] = SP_SERVER;
            continue;
        }
        for (uint16_t j = 0; j < top->subcommand_count; j++) {
            uint32_t id = cmd_id(u, top, &top->subcommands[j]);
            if (cmdtab_server_wide(&top->subcommands[j]) && u->special[id] == SP_NONE)
                u->special[id] = SP_SERVER;
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Compiling                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Redis's error numbers for ACL SETUSER, and respguard's own refusals. */
enum rule_error {
    RE_NONE,
    RE_ENOENT,
    RE_EINVAL,
    RE_EEXIST,
    RE_EISDIR,
    RE_ENODEV,
    RE_EBADMSG,
    RE_ECHILD,
    RE_SELECTOR,
    RE_SANITIZE,
    RE_NOMEM,
};

static const char *rule_error_text(enum rule_error e)
{
    switch (e) {
    case RE_ENOENT: return "Unknown command or category name in ACL";
    case RE_EINVAL: return "Syntax error";
    case RE_EEXIST:
        return "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any "
               "effect. Try 'resetkeys' to start with an empty list of patterns";
    case RE_EISDIR:
        return "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have "
               "any effect. Try 'resetchannels' to start with an empty list of channels";
    case RE_ENODEV: return "The password you are trying to remove from the user does not exist";
    case RE_EBADMSG:
        return "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters";
    case RE_ECHILD: return "Allowing first-arg of a subcommand is not supported";
    case RE_SELECTOR: return "Selectors are not supported by respguard; use one set of rules per user";
    case RE_SANITIZE: return "Payload sanitization rules are not supported by respguard";
    default: return "Wrong format";
    }
}

/* Work state while compiling: the guard set lives only here. */
struct build {
    struct acl_user *u;
    uint64_t *never;
};

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* Redis accepts lower-case hex only */
}

static enum rule_error parse_hash(const char *p, size_t n, uint8_t out[CRYPTO_SHA256_LEN])
{
    if (n != 2 * CRYPTO_SHA256_LEN)
        return RE_EBADMSG;
    for (size_t i = 0; i < CRYPTO_SHA256_LEN; i++) {
        int hi = hexval((unsigned char)p[2 * i]), lo = hexval((unsigned char)p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return RE_EBADMSG;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return RE_NONE;
}

static enum rule_error hash_add(struct acl_user *u, const uint8_t h[CRYPTO_SHA256_LEN])
{
    for (size_t i = 0; i < u->hash_count; i++)
        if (memcmp(u->hashes[i], h, CRYPTO_SHA256_LEN) == 0)
            return RE_NONE;
    void *n = realloc(u->hashes, (u->hash_count + 1) * sizeof *u->hashes);
    if (!n)
        return RE_NOMEM;
    u->hashes = n;
    memcpy(u->hashes[u->hash_count++], h, CRYPTO_SHA256_LEN);
    return RE_NONE;
}

static enum rule_error hash_remove(struct acl_user *u, const uint8_t h[CRYPTO_SHA256_LEN])
{
    for (size_t i = 0; i < u->hash_count; i++) {
        if (memcmp(u->hashes[i], h, CRYPTO_SHA256_LEN) == 0) {
            memmove(u->hashes[i], u->hashes[i + 1], (u->hash_count - i - 1) * sizeof *u->hashes);
            u->hash_count--;
            return RE_NONE;
        }
    }
    return RE_ENODEV;
}

static void hashes_clear(struct acl_user *u)
{
    if (u->hashes)
        crypto_wipe(u->hashes, u->hash_count * sizeof *u->hashes);
    free(u->hashes);
    u->hashes = NULL;
    u->hash_count = 0;
}

static void patterns_clear(struct acl_pattern **list, size_t *count)
{
    for (size_t i = 0; i < *count; i++)
        free((*list)[i].ptr);
    free(*list);
    *list = NULL;
    *count = 0;
}

/* Add a pattern, or merge its flags into an equal one (Redis does not list a pattern twice). */
static enum rule_error pattern_add(struct acl_pattern **list, size_t *count, const char *p, size_t n, uint8_t flags)
{
    for (size_t i = 0; i < *count; i++) {
        if ((*list)[i].len == n && memcmp((*list)[i].ptr, p, n) == 0) {
            (*list)[i].flags |= flags;
            return RE_NONE;
        }
    }
    void *m = realloc(*list, (*count + 1) * sizeof **list);
    if (!m)
        return RE_NOMEM;
    *list = m;
    char *copy = malloc(n + 1);
    if (!copy)
        return RE_NOMEM;
    memcpy(copy, p, n);
    copy[n] = '\0';
    (*list)[*count] = (struct acl_pattern){.ptr = copy, .len = n, .flags = flags};
    (*count)++;
    return RE_NONE;
}

static void firstargs_reset(struct acl_user *u, uint32_t id, bool all)
{
    size_t k = 0;
    for (size_t i = 0; i < u->firstarg_count; i++) {
        if (all || u->firstargs[i].id == id)
            free(u->firstargs[i].arg);
        else
            u->firstargs[k++] = u->firstargs[i];
    }
    u->firstarg_count = k;
}

static enum rule_error firstarg_add(struct acl_user *u, uint32_t id, const char *p, size_t n)
{
    for (size_t i = 0; i < u->firstarg_count; i++) {
        const char *a = u->firstargs[i].arg;
        if (u->firstargs[i].id == id && strlen(a) == n && token_is(p, n, a))
            return RE_NONE;
    }
    void *m = realloc(u->firstargs, (u->firstarg_count + 1) * sizeof *u->firstargs);
    if (!m)
        return RE_NOMEM;
    u->firstargs = m;
    char *copy = malloc(n + 1);
    if (!copy)
        return RE_NOMEM;
    memcpy(copy, p, n);
    copy[n] = '\0';
    u->firstargs[u->firstarg_count++] = (struct acl_firstarg){.id = id, .arg = copy};
    return RE_NONE;
}

/* Set or clear one command bit. Clearing also takes back an explicit grant. */
static void perm_bit(struct acl_user *u, uint32_t id, bool allow, bool explicit)
{
    bit_put(u->allowed, id, allow);
    if (!allow)
        bit_put(u->named, id, false);
    else if (explicit)
        bit_put(u->named, id, true);
}

/* Redis's ACLChangeSelectorPerm: the command, its first-argument rules, and for a container
 * every subcommand. */
static void change_perm(struct acl_user *u, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub, bool allow,
                        bool explicit)
{
    uint32_t id = cmd_id(u, top, sub);
    perm_bit(u, id, allow, explicit);
    firstargs_reset(u, id, false);
    if (!sub && top->subcommands)
        for (uint16_t j = 0; j < top->subcommand_count; j++)
            perm_bit(u, cmd_id(u, top, &top->subcommands[j]), allow, explicit);
}

static void all_commands(struct acl_user *u, bool allow)
{
    memset(u->allowed, allow ? 0xff : 0, words(u) * sizeof(uint64_t));
    if (!allow)
        memset(u->named, 0, words(u) * sizeof(uint64_t));
    firstargs_reset(u, 0, true);
}

static enum rule_error category_rule(struct acl_user *u, const char *name, size_t n, bool allow)
{
    uint32_t bit = cmdtab_category_lookup(name, n);
    if (bit == 0)
        return RE_ENOENT;
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const struct cmdtab_cmd *t = &cmdtab_commands[i];
        if (t->flags & CMDTAB_MODULE)
            continue;
        if (t->categories & bit)
            change_perm(u, t, NULL, allow, false);
        for (uint16_t j = 0; j < t->subcommand_count; j++)
            if (t->subcommands[j].categories & bit)
                change_perm(u, t, &t->subcommands[j], allow, false);
    }
    return RE_NONE;
}

/* +name, +name|sub, +name|firstarg (Redis 7.0's ACLSetSelector for '+'). */
static enum rule_error plus_rule(struct acl_user *u, const char *p, size_t n)
{
    const struct cmdtab_cmd *top, *sub;
    const char *bar = NULL;
    for (size_t i = n; i > 0; i--)
        if (p[i - 1] == '|') {
            bar = p + i - 1;
            break;
        }
    if (!bar) {
        if (!lookup_rule_name(p, n, &top, &sub))
            return RE_ENOENT;
        change_perm(u, top, sub, true, true);
        return RE_NONE;
    }
    /* Split at the last '|': what is before it must be a command, not a subcommand. */
    size_t head = (size_t)(bar - p), tail = n - head - 1;
    if (!lookup_rule_name(p, head, &top, &sub))
        return RE_ENOENT;
    if (sub)
        return RE_ECHILD;
    if (tail == 0)
        return RE_EINVAL;
    if (top->subcommands) {
        if (!lookup_rule_name(p, n, &top, &sub))
            return RE_ENOENT;
        change_perm(u, top, sub, true, true);
        return RE_NONE;
    }
    return firstarg_add(u, cmd_id(u, top, NULL), bar + 1, tail);
}

static enum rule_error key_rule(struct acl_user *u, const char *tok, size_t n)
{
    if (u->flags & ACL_USER_ALLKEYS)
        return RE_EEXIST;
    uint8_t flags = 0;
    size_t off = 1;
    if (tok[0] == '%') {
        for (; off < n; off++) {
            unsigned char c = fold((unsigned char)tok[off]);
            if (c == 'r' && !(flags & ACL_PATTERN_READ)) {
                flags |= ACL_PATTERN_READ;
            } else if (c == 'w' && !(flags & ACL_PATTERN_WRITE)) {
                flags |= ACL_PATTERN_WRITE;
            } else if (tok[off] == '~') {
                off++;
                break;
            } else {
                return RE_EINVAL;
            }
        }
        if (!flags)
            return RE_EINVAL;
    } else {
        flags = ACL_PATTERN_READ | ACL_PATTERN_WRITE;
    }
    return pattern_add(&u->keys, &u->key_count, tok + off, n - off, flags);
}

static enum rule_error apply_rule(struct build *b, const char *tok, size_t n)
{
    struct acl_user *u = b->u;
    uint8_t h[CRYPTO_SHA256_LEN];
    enum rule_error e = RE_NONE;

    /* User-level rules first, as in Redis's ACLSetUser. */
    if (token_is(tok, n, "on")) {
        u->enabled = true;
    } else if (token_is(tok, n, "off")) {
        u->enabled = false;
    } else if (token_is(tok, n, "skip-sanitize-payload") || token_is(tok, n, "sanitize-payload")) {
        return RE_SANITIZE;
    } else if (token_is(tok, n, "nopass")) {
        hashes_clear(u);
        u->nopass = true;
    } else if (token_is(tok, n, "resetpass")) {
        hashes_clear(u);
        u->nopass = false;
    } else if (tok[0] == '>') {
        crypto_sha256(tok + 1, n - 1, h);
        e = hash_add(u, h);
        crypto_wipe(h, sizeof h);
        u->nopass = false;
    } else if (tok[0] == '#') {
        if ((e = parse_hash(tok + 1, n - 1, h)) != RE_NONE)
            return e;
        e = hash_add(u, h);
        u->nopass = false;
    } else if (tok[0] == '<') {
        crypto_sha256(tok + 1, n - 1, h);
        e = hash_remove(u, h);
        crypto_wipe(h, sizeof h);
    } else if (tok[0] == '!') {
        if ((e = parse_hash(tok + 1, n - 1, h)) != RE_NONE)
            return e;
        e = hash_remove(u, h);
    } else if (tok[0] == '(') {
        return RE_SELECTOR;
    } else if (token_is(tok, n, "clearselectors")) {
        /* no selectors to clear */
    } else if (token_is(tok, n, "reset")) {
        hashes_clear(u);
        u->nopass = false;
        patterns_clear(&u->keys, &u->key_count);
        patterns_clear(&u->channels, &u->channel_count);
        u->flags &= ~(uint32_t)(ACL_USER_ALLKEYS | ACL_USER_ALLCHANNELS);
        u->enabled = false;
        all_commands(u, false);
    }
    /* Then the selector rules (ACLSetSelector). */
    else if (token_is(tok, n, "allkeys") || token_is(tok, n, "~*")) {
        u->flags |= ACL_USER_ALLKEYS;
        patterns_clear(&u->keys, &u->key_count);
    } else if (token_is(tok, n, "allchannels") || token_is(tok, n, "&*")) {
        u->flags |= ACL_USER_ALLCHANNELS;
        patterns_clear(&u->channels, &u->channel_count);
    } else if (token_is(tok, n, "resetkeys")) {
        u->flags &= ~(uint32_t)ACL_USER_ALLKEYS;
        patterns_clear(&u->keys, &u->key_count);
    } else if (token_is(tok, n, "resetchannels")) {
        u->flags &= ~(uint32_t)ACL_USER_ALLCHANNELS;
        patterns_clear(&u->channels, &u->channel_count);
    } else if (token_is(tok, n, "allcommands") || token_is(tok, n, "+@all")) {
        all_commands(u, true);
    } else if (token_is(tok, n, "nocommands") || token_is(tok, n, "-@all")) {
        all_commands(u, false);
    } else if (tok[0] == '~' || tok[0] == '%') {
        e = key_rule(u, tok, n);
    } else if (tok[0] == '&') {
        if (u->flags & ACL_USER_ALLCHANNELS)
            return RE_EISDIR;
        e = pattern_add(&u->channels, &u->channel_count, tok + 1, n - 1, 0);
    } else if (tok[0] == '+' && (n < 2 || tok[1] != '@')) {
        e = plus_rule(u, tok + 1, n - 1);
    } else if (tok[0] == '-' && (n < 2 || tok[1] != '@')) {
        const struct cmdtab_cmd *top, *sub;
        if (!lookup_rule_name(tok + 1, n - 1, &top, &sub))
            return RE_ENOENT;
        change_perm(u, top, sub, false, false);
    } else if ((tok[0] == '+' || tok[0] == '-') && n >= 2 && tok[1] == '@') {
        e = category_rule(u, tok + 2, n - 2, tok[0] == '+');
    } else {
        return RE_EINVAL;
    }
    return e;
}

static int fail(char *err, size_t errlen, const char *tok, size_t n, enum rule_error e)
{
    if (e == RE_NOMEM)
        return -ENOMEM;
    if (err && errlen) {
        /* Never echo a password: show only its marker. */
        if (n && (tok[0] == '>' || tok[0] == '<'))
            snprintf(err, errlen, "Error in ACL SETUSER modifier '%c***': %s", tok[0], rule_error_text(e));
        else
            snprintf(err, errlen, "Error in ACL SETUSER modifier '%.*s': %s", (int)(n > 80 ? 80 : n), tok,
                     rule_error_text(e));
    }
    return -EINVAL;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The end of compiling: pattern marks, user flags, the effective bitmap. */
static void finish(struct build *b)
{
    struct acl_user *u = b->u;
    for (size_t i = 0; i < u->key_count; i++) {
        struct acl_pattern *p = &u->keys[i];
        bool prefix = p->len >= 1 && p->ptr[p->len - 1] == '*';
        for (size_t j = 0; prefix && j + 1 < p->len; j++)
            if (glob_is_special(p->ptr[j]))
                prefix = false;
        if (prefix)
            p->flags |= ACL_PATTERN_PREFIX;
        if (p->len == 1 && p->ptr[0] == '*') {
            if (p->flags & ACL_PATTERN_READ)
                u->flags |= ACL_USER_READ_ALL;
            if ((p->flags & ACL_PATTERN_READ) && (p->flags & ACL_PATTERN_WRITE))
                u->flags |= ACL_USER_RW_ALL;
        }
        if ((p->flags & (ACL_PATTERN_PREFIX | ACL_PATTERN_READ)) == (ACL_PATTERN_PREFIX | ACL_PATTERN_READ)) {
            u->prefix_count++;
            u->only_prefix = p;
        }
    }
    if (u->prefix_count != 1)
        u->only_prefix = NULL;
    if (u->flags & ACL_USER_ALLKEYS)
        u->flags |= ACL_USER_READ_ALL | ACL_USER_RW_ALL;
    for (size_t w = 0; w < words(u); w++)
        u->effective[w] = u->allowed[w] & (~b->never[w] | u->named[w]);
}

int acl_user_compile(const char *name, const char *rules, const char *const *never, size_t never_count,
                     struct acl_user *out, char *err, size_t errlen, size_t *err_offset)
{
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = '\0';
    if (err_offset)
        *err_offset = 0;
    out->name = strdup(name);
    if (!out->name)
        return -ENOMEM;

    /* Command ids: top-level commands first, then each container's subcommands. */
    out->sub_base = calloc(cmdtab_command_count ? cmdtab_command_count : 1, sizeof *out->sub_base);
    if (!out->sub_base)
        return -ENOMEM;
    uint32_t next = (uint32_t)cmdtab_command_count;
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        out->sub_base[i] = next;
        next += cmdtab_commands[i].subcommand_count;
    }
    out->id_count = next;
    out->special = calloc(next ? next : 1, 1);
    if (!out->special)
        return -ENOMEM;
    special_fill(out);
    size_t w = words(out) ? words(out) : 1;
    out->allowed = calloc(3 * w, sizeof(uint64_t));
    if (!out->allowed)
        return -ENOMEM;
    out->named = out->allowed + w;
    out->effective = out->named + w;
    uint64_t *never_bits = calloc(w, sizeof(uint64_t));
    if (!never_bits)
        return -ENOMEM;
    struct build b = {.u = out, .never = never_bits};
    for (size_t i = 0; i < never_count; i++) {
        const struct cmdtab_cmd *top, *sub;
        if (!never[i] || !lookup_rule_name(never[i], strlen(never[i]), &top, &sub))
            continue;
        bit_put(never_bits, cmd_id(out, top, sub), true);
        if (!sub)
            for (uint16_t j = 0; j < top->subcommand_count; j++)
                bit_put(never_bits, cmd_id(out, top, &top->subcommands[j]), true);
    }

    int rc = 0;
    const char *p = rules ? rules : "";
    while (*p) {
        while (is_space(*p))
            p++;
        if (!*p)
            break;
        const char *tok = p;
        while (*p && !is_space(*p))
            p++;
        size_t n = (size_t)(p - tok);
        enum rule_error e = apply_rule(&b, tok, n);
        if (e != RE_NONE) {
            if (err_offset)
                *err_offset = (size_t)(tok - rules);
            rc = fail(err, errlen, tok, n, e);
            break;
        }
    }
    if (rc == 0)
        finish(&b);
    free(never_bits);
    return rc;
}

static bool same_patterns(const struct acl_pattern *a, size_t an, const struct acl_pattern *b, size_t bn)
{
    if (an != bn)
        return false;
    for (size_t i = 0; i < an; i++)
        if (a[i].len != b[i].len || a[i].flags != b[i].flags || memcmp(a[i].ptr, b[i].ptr, a[i].len) != 0)
            return false;
    return true;
}

bool acl_user_same_rules(const struct acl_user *a, const struct acl_user *b)
{
    if (a->id_count != b->id_count || a->flags != b->flags || a->firstarg_count != b->firstarg_count ||
        memcmp(a->effective, b->effective, words(a) * sizeof(uint64_t)) != 0 ||
        memcmp(a->allowed, b->allowed, words(a) * sizeof(uint64_t)) != 0 ||
        memcmp(a->special, b->special, a->id_count) != 0 ||
        !same_patterns(a->keys, a->key_count, b->keys, b->key_count) ||
        !same_patterns(a->channels, a->channel_count, b->channels, b->channel_count))
        return false;
    for (size_t i = 0; i < a->firstarg_count; i++)
        if (a->firstargs[i].id != b->firstargs[i].id || strcmp(a->firstargs[i].arg, b->firstargs[i].arg) != 0)
            return false;
    return true;
}

void acl_user_deinit(struct acl_user *u)
{
    free(u->name);
    hashes_clear(u);
    free(u->sub_base);
    free(u->special);
    free(u->allowed); /* named and effective share its allocation */
    firstargs_reset(u, 0, true);
    free(u->firstargs);
    patterns_clear(&u->keys, &u->key_count);
    patterns_clear(&u->channels, &u->channel_count);
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

bool acl_user_names_command(const struct acl_user *u, const char *cmd, const char *sub)
{
    if (!u->allowed)
        return false;
    const struct cmdtab_cmd *top = cmdtab_lookup(cmd, strlen(cmd)), *s = NULL;
    if (!top)
        return false;
    if (sub && top->subcommands)
        s = cmdtab_lookup_sub(top, sub, strlen(sub));
    uint32_t id = cmd_id(u, top, s);
    return bit_get(u->named, id) && bit_get(u->allowed, id);
}

bool acl_command_known(const char *name, size_t len)
{
    const struct cmdtab_cmd *top, *sub;
    return name && lookup_rule_name(name, len, &top, &sub);
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

/* ---------------------------------------------------------------------------------------- */
/* The verdict                                                                               */
/* ---------------------------------------------------------------------------------------- */

const char *acl_reason_name(enum acl_reason r)
{
    switch (r) {
    case ACL_REASON_NONE: return "none";
    case ACL_REASON_REDIS: return "acl";
    case ACL_REASON_SORT: return "sort";
    case ACL_REASON_GUARD: return "guard";
    case ACL_REASON_SCRIPT: return "script";
    case ACL_REASON_SCRIPT_ADMIN: return "script-admin";
    case ACL_REASON_MIGRATE: return "migrate";
    case ACL_REASON_ENUMERATION: return "enumeration";
    case ACL_REASON_DATABASE: return "database";
    case ACL_REASON_CLIENT: return "client";
    case ACL_REASON_MONITOR: return "monitor";
    case ACL_REASON_SYSTEM_CHANNEL: return "system-channel";
    case ACL_REASON_KEY_EXTRACTION: return "key-extraction";
    case ACL_REASON_TOO_MANY: return "too-many";
    case ACL_REASON_SERVER: return "server";
    }
    return "?";
}

static int refuse(struct acl_verdict *v, enum acl_result r, enum acl_reason why, size_t pos)
{
    v->result = r;
    v->reason = why;
    v->pos = pos;
    return -EPERM;
}

/* Redis's strcasecmp(argv[1], firstarg) for the deprecated first-argument rules. */
static bool firstarg_ok(const struct acl_user *u, uint32_t id, size_t argc, const struct resp_arg *argv)
{
    if (argc < 2)
        return false;
    for (size_t i = 0; i < u->firstarg_count; i++)
        if (u->firstargs[i].id == id && arg_is(&argv[1], u->firstargs[i].arg))
            return true;
    return false;
}

static bool key_allowed(const struct acl_user *u, const struct resp_arg *k, uint16_t spec_flags)
{
    uint8_t need = 0;
    if (spec_flags & CMDTAB_KEY_ACCESS)
        need |= ACL_PATTERN_READ;
    if (spec_flags & (CMDTAB_KEY_INSERT | CMDTAB_KEY_DELETE | CMDTAB_KEY_UPDATE))
        need |= ACL_PATTERN_WRITE;
    for (size_t i = 0; i < u->key_count; i++) {
        const struct acl_pattern *p = &u->keys[i];
        if ((p->flags & need) == need && glob_match(p->ptr, p->len, k->ptr, k->len))
            return true;
    }
    return false;
}

/* A pattern argument (PSUBSCRIBE) must equal one of the user's channel patterns, compared as
 * Redis 7.0 does with strcmp (so the argument ends at a NUL byte; a rule never holds one); a
 * channel must match one. */
static bool channel_allowed(const struct acl_user *u, const struct resp_arg *c, bool is_pattern)
{
    size_t clen = is_pattern ? cstr_len(c) : c->len;
    for (size_t i = 0; i < u->channel_count; i++) {
        const struct acl_pattern *p = &u->channels[i];
        if (is_pattern ? (p->len == clen && memcmp(p->ptr, c->ptr, clen) == 0)
                       : glob_match(p->ptr, p->len, c->ptr, c->len))
            return true;
    }
    return false;
}

static const struct {
    const char *p;
    size_t n;
} reserved_channels[] = {{"__keyspace@", 11}, {"__keyevent@", 11}, {"__redis__", 9}};

static bool channel_reserved(const struct resp_arg *c, bool is_pattern)
{
    for (size_t i = 0; i < sizeof reserved_channels / sizeof reserved_channels[0]; i++) {
        const char *p = reserved_channels[i].p;
        size_t n = reserved_channels[i].n;
        if (is_pattern ? glob_may_match_prefix(c->ptr, c->len, p, n) : (c->len >= n && memcmp(c->ptr, p, n) == 0))
            return true;
    }
    return false;
}

/* Does every key a KEYS/SCAN pattern can match begin with the literal part of one of the user's
 * readable prefix patterns? */
static bool pattern_confined(const struct acl_user *u, const struct resp_arg *pat)
{
    for (size_t i = 0; i < u->key_count; i++) {
        const struct acl_pattern *p = &u->keys[i];
        if ((p->flags & (ACL_PATTERN_PREFIX | ACL_PATTERN_READ)) != (ACL_PATTERN_PREFIX | ACL_PATTERN_READ))
            continue;
        size_t lit = p->len - 1;
        if (pat->len >= lit && memcmp(pat->ptr, p->ptr, lit) == 0)
            return true;
    }
    return false;
}

/* SCAN cursor [MATCH p] [COUNT n] [TYPE t], parsed as Redis's scanGenericCommand does. Returns
 * the index of the pattern of the last MATCH, 0 when there is none, (size_t)-1 on a syntax
 * error. */
static size_t scan_match(size_t argc, const struct resp_arg *argv)
{
    size_t last = 0;
    for (size_t i = 2; i < argc;) {
        size_t more = argc - i;
        if (more >= 2 && (arg_is(&argv[i], "count") || arg_is(&argv[i], "type"))) {
            i += 2;
        } else if (more >= 2 && arg_is(&argv[i], "match")) {
            last = i + 1;
            i += 2;
        } else {
            return (size_t)-1;
        }
    }
    return last;
}

/* Redis's SORT option loop up to its BY/GET refusals (sortCommandGeneric). */
static int check_sort(const struct acl_user *u, bool readonly, size_t argc, const struct resp_arg *argv,
                      struct acl_verdict *v)
{
    if (u->flags & ACL_USER_READ_ALL)
        return 0;
    for (size_t j = 2; j < argc; j++) {
        size_t left = argc - j - 1;
        if (arg_is(&argv[j], "asc") || arg_is(&argv[j], "desc") || arg_is(&argv[j], "alpha")) {
            continue;
        } else if (arg_is(&argv[j], "limit") && left >= 2) {
            if (!valid_ll(&argv[j + 1]) || !valid_ll(&argv[j + 2]))
                return 0; /* Redis answers its own error before any BY or GET */
            j += 2;
        } else if (!readonly && arg_is(&argv[j], "store") && left >= 1) {
            j++;
        } else if (arg_is(&argv[j], "by") && left >= 1) {
            /* Only a pattern with '*' (up to a NUL, as Redis's strchr) reads other keys. */
            if (memchr(argv[j + 1].ptr, '*', cstr_len(&argv[j + 1])))
                return refuse(v, ACL_DENIED_SORT_BY, ACL_REASON_SORT, j);
            j++;
        } else if (arg_is(&argv[j], "get") && left >= 1) {
            return refuse(v, ACL_DENIED_SORT_GET, ACL_REASON_SORT, j);
        } else {
            return 0; /* Redis's syntax error */
        }
    }
    return 0;
}

/* The documented differences, for a command Redis's own ACL allows. */
static int check_special(const struct acl_user *u, uint32_t id, uint8_t kind, size_t argc,
                         const struct resp_arg *argv, struct acl_verdict *v)
{
    bool keys_limited = !(u->flags & ACL_USER_RW_ALL);
    bool read_limited = !(u->flags & ACL_USER_READ_ALL);
    bool tenant = keys_limited || !(u->flags & ACL_USER_ALLCHANNELS);

    switch (kind) {
    case SP_SCRIPT:
        /* A script reaches any key and channel whatever its KEYS say, and respguard cannot look
         * inside it: a tenant runs scripts only when its rules name them (+evalsha), which is
         * the operator trusting that tenant's scripts. */
        return tenant && !bit_get(u->named, id) ? refuse(v, ACL_DENIED_COMMAND, ACL_REASON_SCRIPT, 0) : 0;
    case SP_SCRIPT_ADMIN:
        return tenant && !bit_get(u->named, id) ? refuse(v, ACL_DENIED_COMMAND, ACL_REASON_SCRIPT_ADMIN, 0) : 0;
    case SP_SORT:
    case SP_SORT_RO:
        return check_sort(u, kind == SP_SORT_RO, argc, argv, v);
    case SP_MIGRATE:
        return keys_limited ? refuse(v, ACL_DENIED_COMMAND, ACL_REASON_MIGRATE, 0) : 0;
    case SP_SERVER:
        /* A first-argument rule (+debug|object) names the command too. */
        if (tenant && !bit_get(u->named, id) && !firstarg_ok(u, id, argc, argv))
            return refuse(v, ACL_DENIED_COMMAND, ACL_REASON_SERVER, 0);
        return 0;
    case SP_KEYS:
        if (read_limited && !pattern_confined(u, &argv[1]))
            return refuse(v, ACL_DENIED_KEY, ACL_REASON_ENUMERATION, 1);
        return 0;
    case SP_SCAN: {
        if (!read_limited)
            return 0;
        size_t m = scan_match(argc, argv);
        if (m != (size_t)-1 && m != 0 && pattern_confined(u, &argv[m]))
            return 0;
        if (u->only_prefix) {
            v->result = ACL_OK_APPEND_MATCH;
            v->match = u->only_prefix->ptr;
            v->match_len = u->only_prefix->len;
            return 0;
        }
        return refuse(v, ACL_DENIED_KEY, ACL_REASON_ENUMERATION, m == (size_t)-1 ? 0 : m);
    }
    case SP_SELECT:
        return keys_limited && !arg_is_zero(&argv[1]) ? refuse(v, ACL_DENIED_COMMAND, ACL_REASON_DATABASE, 1) : 0;
    case SP_DB:
        if (keys_limited)
            return refuse(v, ACL_DENIED_COMMAND, ACL_REASON_DATABASE, 0);
        /* SWAPDB also swaps every other client's data: server-wide for any tenant */
        if (tenant && cmdtab_server_wide(v->cmd) && !bit_get(u->named, id))
            return refuse(v, ACL_DENIED_COMMAND, ACL_REASON_SERVER, 0);
        return 0;
    case SP_COPY:
        if (!keys_limited)
            return 0;
        /* COPY src dst [DB n] [REPLACE], as Redis's copyCommand reads it; any DB but 0 is
         * outside what the proxy can confine. */
        for (size_t j = 3; j < argc; j++) {
            if (arg_is(&argv[j], "db") && j + 1 < argc) {
                if (!arg_is_zero(&argv[j + 1]))
                    return refuse(v, ACL_DENIED_KEY, ACL_REASON_DATABASE, j + 1);
                j++;
            }
        }
        return 0;
    case SP_CLIENT:
        return tenant ? refuse(v, ACL_DENIED_COMMAND, ACL_REASON_CLIENT, 0) : 0;
    case SP_TRACKING:
        if (!tenant)
            return 0;
        for (size_t j = 3; j < argc; j++) {
            bool more = j + 1 < argc;
            if ((arg_is(&argv[j], "redirect") && more) || arg_is(&argv[j], "bcast"))
                return refuse(v, ACL_DENIED_COMMAND, ACL_REASON_CLIENT, j);
            if (arg_is(&argv[j], "prefix") && more)
                j++;
        }
        return 0;
    case SP_MONITOR:
        /* The stream shows every client's commands with their arguments: only for a user
         * trusted with everything who asked for it by name. */
        return tenant || !bit_get(u->named, id) ? refuse(v, ACL_DENIED_COMMAND, ACL_REASON_MONITOR, 0) : 0;
    case SP_PUBSUB_LIST:
        /* PUBSUB CHANNELS with no pattern lists every channel; with one, the channel loop
         * below judges it. */
        return tenant && argc < 3 ? refuse(v, ACL_DENIED_CHANNEL, ACL_REASON_ENUMERATION, 0) : 0;
    default:
        return 0;
    }
}

int acl_check_ex(const struct acl_user *u, size_t argc, const struct resp_arg *argv, struct acl_verdict *v,
                 struct cmdtab_key *keys, struct cmdtab_channel *chans, size_t cap)
{
    const struct cmdtab_cmd *top = argc ? cmdtab_lookup(argv[0].ptr, argv[0].len) : NULL, *sub = NULL;
    if (top && top->subcommands && argc >= 2)
        sub = cmdtab_lookup_sub(top, argv[1].ptr, argv[1].len);
    return acl_check_found(u, top, sub, argc, argv, v, keys, chans, cap);
}

int acl_check_found(const struct acl_user *u, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub,
                    size_t argc, const struct resp_arg *argv, struct acl_verdict *v, struct cmdtab_key *keys,
                    struct cmdtab_channel *chans, size_t cap)
{
    memset(v, 0, sizeof *v);
    if (argc == 0)
        return refuse(v, ACL_ERR_UNKNOWN_COMMAND, ACL_REASON_NONE, 0);

    /* Redis's processCommand: lookup, subcommand, arity. */
    if (!top)
        return refuse(v, ACL_ERR_UNKNOWN_COMMAND, ACL_REASON_NONE, 0);
    if (top->subcommands && argc >= 2 && !sub)
        return refuse(v, ACL_ERR_UNKNOWN_SUBCOMMAND, ACL_REASON_NONE, 1);
    if (!top->subcommands)
        sub = NULL;
    const struct cmdtab_cmd *cmd = sub ? sub : top;
    v->cmd = cmd;
    if (!cmdtab_arity_ok(cmd, argc))
        return refuse(v, ACL_ERR_ARITY, ACL_REASON_NONE, 0);
    if (!u->allowed)
        return refuse(v, ACL_DENIED_COMMAND, ACL_REASON_REDIS, 0);

    uint32_t id = cmd_id(u, top, sub);
    bool tenant = !(u->flags & ACL_USER_RW_ALL) || !(u->flags & ACL_USER_ALLCHANNELS);
    if (u->special[id] == SP_INFO) {
        /* INFO is never refused: client libraries and job queues read it at start-up. Who is
         * not granted the full INFO (a tenant that does not name it, or rules without it) gets
         * the scoped form, which says no more than HELLO does. */
        bool full = bit_get(u->effective, id) && (!tenant || bit_get(u->named, id));
        if (!full) {
            v->result = ACL_OK_SCOPED;
            v->scope = ACL_SCOPE_INFO;
            return 0;
        }
    }

    if (u->special[id] == SP_WHOAMI && bit_get(u->allowed, id)) {
        /* Answered by respguard with the user's own name: nothing for the guard to keep. */
        v->result = ACL_OK_SCOPED;
        v->scope = ACL_SCOPE_WHOAMI;
        return 0;
    }

    /* ACL: the command (Redis's ACLSelectorCheckCmd), then the guard. */
    if (!(cmd->flags & CMDTAB_NO_AUTH) && !bit_get(u->effective, id) && !firstarg_ok(u, id, argc, argv)) {
        bool redis_allows = bit_get(u->allowed, id);
        return refuse(v, ACL_DENIED_COMMAND, redis_allows ? ACL_REASON_GUARD : ACL_REASON_REDIS, 0);
    }

    /* Every key, with the permission its key spec needs. */
    if (!(u->flags & ACL_USER_ALLKEYS)) {
        int n = cmdtab_get_keys(cmd, argc, argv, keys, cap);
        if (n < 0)
            return refuse(v, ACL_DENIED_KEY, ACL_REASON_KEY_EXTRACTION, 0);
        if ((size_t)n > cap)
            return refuse(v, ACL_DENIED_KEY, ACL_REASON_TOO_MANY, 0);
        for (int i = 0; i < n; i++) {
            if (keys[i].flags & CMDTAB_KEY_NOT_KEY)
                continue;
            if (keys[i].pos >= argc || !key_allowed(u, &argv[keys[i].pos], keys[i].flags))
                return refuse(v, ACL_DENIED_KEY, ACL_REASON_REDIS, keys[i].pos);
        }
    }

    /* Channels: Redis checks the publish and subscribe ones; respguard also those that only
     * list or count channels, and reserved channels for tenants. */
    int nc = 0;
    if (tenant && (cmd->categories & CMDTAB_CAT_PUBSUB)) {
        nc = cmdtab_get_channels(cmd, argc, argv, chans, cap);
        if (nc < 0)
            return refuse(v, ACL_DENIED_CHANNEL, ACL_REASON_KEY_EXTRACTION, 0);
        if ((size_t)nc > cap)
            return refuse(v, ACL_DENIED_CHANNEL, ACL_REASON_TOO_MANY, 0);
    }
    const uint16_t checked = CMDTAB_CHANNEL_PUBLISH | CMDTAB_CHANNEL_SUBSCRIBE;
    if (!(u->flags & ACL_USER_ALLCHANNELS)) {
        for (int i = 0; i < nc; i++) {
            if (!(chans[i].flags & checked) || chans[i].pos >= argc)
                continue;
            if (!channel_allowed(u, &argv[chans[i].pos], chans[i].flags & CMDTAB_CHANNEL_PATTERN))
                return refuse(v, ACL_DENIED_CHANNEL, ACL_REASON_REDIS, chans[i].pos);
        }
    }

    /* respguard's documented differences. */
    uint8_t kind = u->special[id];
    if (kind != SP_NONE && check_special(u, id, kind, argc, argv, v) != 0)
        return -EPERM;
    for (int i = 0; i < nc; i++) {
        const struct resp_arg *c = &argv[chans[i].pos];
        bool is_pattern = chans[i].flags & CMDTAB_CHANNEL_PATTERN;
        if (chans[i].pos >= argc || !(chans[i].flags & (checked | CMDTAB_CHANNEL_INSPECT)))
            continue;
        if (channel_reserved(c, is_pattern))
            return refuse(v, ACL_DENIED_CHANNEL, ACL_REASON_SYSTEM_CHANNEL, chans[i].pos);
        if ((chans[i].flags & CMDTAB_CHANNEL_INSPECT) && !(u->flags & ACL_USER_ALLCHANNELS) &&
            !channel_allowed(u, c, is_pattern))
            return refuse(v, ACL_DENIED_CHANNEL, ACL_REASON_ENUMERATION, chans[i].pos);
    }
    return 0;
}

int acl_check(const struct acl_user *u, size_t argc, const struct resp_arg *argv, struct acl_verdict *out)
{
    struct cmdtab_key keys[ACL_CHECK_STACK_ITEMS];
    struct cmdtab_channel chans[ACL_CHECK_STACK_ITEMS];
    return acl_check_ex(u, argc, argv, out, keys, chans, ACL_CHECK_STACK_ITEMS);
}

/* ---------------------------------------------------------------------------------------- */
/* Error lines                                                                               */
/* ---------------------------------------------------------------------------------------- */

struct line {
    char *buf;
    size_t cap, len;
};

/* Append bytes; CR and LF become spaces, as Redis's sdsmapchars does on these errors. */
static void put(struct line *l, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++, l->len++) {
        if (l->len + 1 < l->cap) {
            char c = p[i];
            l->buf[l->len] = (c == '\r' || c == '\n') ? ' ' : c;
        }
    }
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Redis's "%.Ns" of an argument: at most max bytes, ending at a NUL. */
static size_t put_arg(struct line *l, const struct resp_arg *a, size_t max)
{
    size_t n = cstr_len(a);
    if (n > max)
        n = max;
    put(l, a->ptr, n);
    return n;
}

size_t acl_verdict_error(const struct acl_verdict *v, size_t argc, const struct resp_arg *argv, char *buf,
                         size_t cap)
{
    struct line l = {.buf = buf, .cap = cap, .len = 0};
    /* Redis answers a refused EXEC with EXECABORT, inside MULTI or not (execCommandAbort): the
     * error follows without its '-', and the "ERR " Redis would have added is not there. */
    bool exec = v->cmd && strcmp(v->cmd->name, "exec") == 0 && v->result != ACL_OK &&
                v->result != ACL_OK_APPEND_MATCH && v->result != ACL_OK_SCOPED;
    if (exec)
        puts_(&l, "EXECABORT Transaction discarded because of: ");
    switch (v->result) {
    case ACL_OK:
    case ACL_OK_APPEND_MATCH:
    case ACL_OK_SCOPED:
        break;
    case ACL_ERR_UNKNOWN_COMMAND: {
        puts_(&l, "ERR unknown command '");
        if (argc > 0)
            put_arg(&l, &argv[0], 128);
        puts_(&l, "', with args beginning with: ");
        /* Redis: for (i = 1; i < argc && sdslen(args) < 128; i++) args += "'%.*s' " with the
         * precision 128 - sdslen(args). */
        size_t args = 0;
        for (size_t i = 1; i < argc && args < 128; i++) {
            puts_(&l, "'");
            args += put_arg(&l, &argv[i], 128 - args) + 3;
            puts_(&l, "' ");
        }
        break;
    }
    case ACL_ERR_UNKNOWN_SUBCOMMAND: {
        puts_(&l, "ERR unknown subcommand '");
        if (argc > 1)
            put_arg(&l, &argv[1], 128);
        puts_(&l, "'. Try ");
        size_t n = argc > 0 ? cstr_len(&argv[0]) : 0;
        for (size_t i = 0; i < n; i++) {
            char c = argv[0].ptr[i];
            c = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
            put(&l, &c, 1);
        }
        puts_(&l, " HELP.");
        break;
    }
    case ACL_ERR_ARITY:
        puts_(&l, exec ? "wrong number of arguments for '" : "ERR wrong number of arguments for '");
        puts_(&l, v->cmd ? v->cmd->name : "?");
        puts_(&l, "' command");
        break;
    case ACL_DENIED_COMMAND:
        puts_(&l, "NOPERM this user has no permissions to run the '");
        puts_(&l, v->cmd ? v->cmd->name : "?");
        puts_(&l, "' command");
        break;
    case ACL_DENIED_KEY:
        puts_(&l, "NOPERM this user has no permissions to access one of the keys used as arguments");
        break;
    case ACL_DENIED_CHANNEL:
        puts_(&l, "NOPERM this user has no permissions to access one of the channels used as arguments");
        break;
    case ACL_DENIED_SORT_BY:
        puts_(&l, "ERR BY option of SORT denied due to insufficient ACL permissions.");
        break;
    case ACL_DENIED_SORT_GET:
        puts_(&l, "ERR GET option of SORT denied due to insufficient ACL permissions.");
        break;
    }
    if (cap > 0)
        buf[l.len < cap ? l.len : cap - 1] = '\0';
    return l.len;
}

int acl_check_scratch(const struct acl_user *u, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub,
                      size_t argc, const struct resp_arg *argv, struct acl_verdict *v, struct acl_scratch *s)
{
    if (argc <= ACL_CHECK_STACK_ITEMS) {
        struct cmdtab_key keys[ACL_CHECK_STACK_ITEMS];
        struct cmdtab_channel chans[ACL_CHECK_STACK_ITEMS];
        return acl_check_found(u, top, sub, argc, argv, v, keys, chans, ACL_CHECK_STACK_ITEMS);
    }
    if (s->cap < argc) {
        void *k = realloc(s->keys, argc * sizeof *s->keys);
        if (k)
            s->keys = k;
        void *c = realloc(s->channels, argc * sizeof *s->channels);
        if (c)
            s->channels = c;
        if (!k || !c) {
            memset(v, 0, sizeof *v);
            v->result = ACL_DENIED_KEY;
            v->reason = ACL_REASON_TOO_MANY;
            return -ENOMEM;
        }
        s->cap = argc;
    }
    return acl_check_found(u, top, sub, argc, argv, v, s->keys, s->channels, s->cap);
}

const struct resp_arg *acl_append_match(struct acl_scratch *s, size_t argc, const struct resp_arg *argv,
                                        const struct acl_verdict *v)
{
    if (s->args_cap < argc + 2) {
        void *a = realloc(s->args, (argc + 2) * sizeof *s->args);
        if (!a)
            return NULL;
        s->args = a;
        s->args_cap = argc + 2;
    }
    memcpy(s->args, argv, argc * sizeof *argv);
    s->args[argc] = (struct resp_arg){"MATCH", 5};
    s->args[argc + 1] = (struct resp_arg){v->match, v->match_len};
    return s->args;
}

void acl_scratch_free(struct acl_scratch *s)
{
    free(s->keys);
    free(s->channels);
    free(s->args);
    *s = (struct acl_scratch){0};
}
