/*
 * Unit tests for cmdtab: lookups, arity, categories, key extraction for every key-spec shape and
 * every extractor, channels, and bounds: each argument lives in a heap block of exactly its
 * length (no NUL after it), so AddressSanitizer reports any read past an argument.
 *
 * Expected positions come from redis-server 7.0.15's COMMAND GETKEYSANDFLAGS (and ACL DRYRUN for
 * channels); the differential test checks thousands more against the live server. These tests
 * must not depend on the table's size or order beyond what cmdtab.h promises, so that a table
 * regenerated from a newer server still passes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "respguard/cmdtab.h"

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

#define MAXARGS 64

/* A command whose arguments are exact-size heap copies. A word may hold NUL bytes when given
 * with an explicit length through struct word. */
struct word {
    const char *s;
    size_t len;
};
struct cmdv {
    size_t argc;
    struct resp_arg argv[MAXARGS];
};

static void cmdv_init(struct cmdv *c, const struct word *w, size_t n)
{
    assert_true(n <= MAXARGS);
    c->argc = n;
    for (size_t i = 0; i < n; i++) {
        char *p = NULL;
        if (w[i].len > 0) {
            p = malloc(w[i].len);
            assert_non_null(p);
            memcpy(p, w[i].s, w[i].len);
        }
        c->argv[i].ptr = p; /* NULL for an empty argument: nothing may be read from it */
        c->argv[i].len = w[i].len;
    }
}

static void cmdv_free(struct cmdv *c)
{
    for (size_t i = 0; i < c->argc; i++)
        free((void *)c->argv[i].ptr);
}

/* Words from C strings (no NUL bytes inside). */
static void cmdv_words(struct cmdv *c, const char *const *s, size_t n)
{
    struct word w[MAXARGS];
    assert_true(n <= MAXARGS);
    for (size_t i = 0; i < n; i++) {
        w[i].s = s[i];
        w[i].len = strlen(s[i]);
    }
    cmdv_init(c, w, n);
}

/* The command or subcommand entry argv names, as a caller resolves it. */
static const struct cmdtab_cmd *resolve(const struct cmdv *c)
{
    const struct cmdtab_cmd *cmd = cmdtab_lookup(c->argv[0].ptr, c->argv[0].len);
    if (cmd && cmd->subcommands && c->argc > 1)
        cmd = cmdtab_lookup_sub(cmd, c->argv[1].ptr, c->argv[1].len);
    return cmd;
}

#define WORDS(...) ((const char *const[]){__VA_ARGS__}), \
    (sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))
#define POS(...) ((const unsigned[]){__VA_ARGS__}), \
    (sizeof((const unsigned[]){__VA_ARGS__}) / sizeof(unsigned))

/* Runs cmdtab_get_keys on the words; the real keys (not NOT_KEY) go to pos/flags. */
static int keys_of_cmdv(struct cmdv *c, unsigned *pos, uint16_t *flags, unsigned *notkeys,
                        size_t *n_notkeys)
{
    const struct cmdtab_cmd *cmd = resolve(c);
    assert_non_null(cmd);
    assert_true(cmdtab_arity_ok(cmd, c->argc));
    struct cmdtab_key keys[MAXARGS];
    int n = cmdtab_get_keys(cmd, c->argc, c->argv, keys, MAXARGS);
    int real = 0;
    size_t nk = 0;
    for (int i = 0; i < n; i++) {
        assert_true(keys[i].pos < c->argc);
        if (keys[i].flags & CMDTAB_KEY_NOT_KEY) {
            if (notkeys)
                notkeys[nk] = keys[i].pos;
            nk++;
            continue;
        }
        pos[real] = keys[i].pos;
        if (flags)
            flags[real] = keys[i].flags;
        real++;
    }
    if (n_notkeys)
        *n_notkeys = nk;
    return n < 0 ? -1 : real;
}

static void expect_keys(const char *const *w, size_t n, const unsigned *want, size_t nwant)
{
    struct cmdv c;
    unsigned pos[MAXARGS];
    cmdv_words(&c, w, n);
    int got = keys_of_cmdv(&c, pos, NULL, NULL, NULL);
    if (got != (int)nwant)
        fail_msg("%s: %d keys, expected %zu", w[0], got, nwant);
    for (size_t i = 0; i < nwant; i++)
        assert_int_equal(pos[i], want[i]);
    cmdv_free(&c);
}

static void expect_count(const char *const *w, size_t n, int want)
{
    struct cmdv c;
    unsigned pos[MAXARGS];
    cmdv_words(&c, w, n);
    int got = keys_of_cmdv(&c, pos, NULL, NULL, NULL);
    if (got != want)
        fail_msg("%s %s: %d keys, expected %d", w[0], n > 1 ? w[1] : "", got, want);
    cmdv_free(&c);
}

/* Flags of the only/first key. */
static uint16_t first_key_flags(const char *const *w, size_t n)
{
    struct cmdv c;
    unsigned pos[MAXARGS];
    uint16_t flags[MAXARGS];
    cmdv_words(&c, w, n);
    int got = keys_of_cmdv(&c, pos, flags, NULL, NULL);
    assert_true(got >= 1);
    cmdv_free(&c);
    return flags[0];
}

/* ------------------------------------------------------------------------------------------ */
/* Table and lookups                                                                          */
/* ------------------------------------------------------------------------------------------ */

static void test_table_sorted(void **state)
{
    (void)state;
    assert_true(cmdtab_command_count >= 200);
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const struct cmdtab_cmd *c = &cmdtab_commands[i];
        if (i > 0)
            assert_true(strcmp(cmdtab_commands[i - 1].name, c->name) < 0);
        assert_null(strchr(c->name, '|'));
        assert_true(c->arity != 0);
        assert_true((c->subcommands == NULL) == (c->subcommand_count == 0));
        size_t plen = strlen(c->name);
        for (size_t j = 0; j < c->subcommand_count; j++) {
            const struct cmdtab_cmd *s = &c->subcommands[j];
            assert_int_equal(strncmp(s->name, c->name, plen), 0);
            assert_int_equal(s->name[plen], '|');
            if (j > 0)
                assert_true(strcmp(c->subcommands[j - 1].name, s->name) < 0);
            assert_null(s->subcommands);
        }
        for (size_t k = 0; k < c->keyspec_count; k++) {
            const struct cmdtab_keyspec *ks = &c->keyspecs[k];
            assert_true(ks->begin != CMDTAB_BEGIN_INVALID && ks->find != CMDTAB_FIND_INVALID);
            if (ks->begin == CMDTAB_BEGIN_KEYWORD)
                assert_non_null(ks->keyword);
        }
    }
}

static void test_lookup(void **state)
{
    (void)state;
    const struct cmdtab_cmd *get = cmdtab_lookup("get", 3);
    assert_non_null(get);
    assert_string_equal(get->name, "get");
    assert_ptr_equal(cmdtab_lookup("GET", 3), get);
    assert_ptr_equal(cmdtab_lookup("gEt", 3), get);
    assert_ptr_equal(cmdtab_lookup("getx", 3), get); /* len decides, not a NUL */
    assert_null(cmdtab_lookup("ge", 2));
    assert_null(cmdtab_lookup("gett", 4));
    assert_null(cmdtab_lookup("get\0", 4));
    assert_null(cmdtab_lookup("nosuchcommand", 13));
    assert_null(cmdtab_lookup("", 0));
    assert_null(cmdtab_lookup(NULL, 0));
    assert_null(cmdtab_lookup("config|get", 10)); /* top level only */
    assert_null(cmdtab_lookup("G\xc9T", 3));      /* only ASCII folds */

    /* Every entry is found by its name, in upper case too, from an exact-size copy. */
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const char *name = cmdtab_commands[i].name;
        size_t len = strlen(name);
        char *up = malloc(len);
        assert_non_null(up);
        for (size_t j = 0; j < len; j++)
            up[j] = (name[j] >= 'a' && name[j] <= 'z') ? (char)(name[j] - 32) : name[j];
        assert_ptr_equal(cmdtab_lookup(up, len), &cmdtab_commands[i]);
        assert_true(cmdtab_lookup(up, len - 1) != &cmdtab_commands[i]);
        free(up);
        const struct cmdtab_cmd *c = &cmdtab_commands[i];
        for (size_t j = 0; j < c->subcommand_count; j++) {
            const char *sub = c->subcommands[j].name + len + 1;
            assert_ptr_equal(cmdtab_lookup_sub(c, sub, strlen(sub)), &c->subcommands[j]);
        }
    }

    const struct cmdtab_cmd *config = cmdtab_lookup("CONFIG", 6);
    assert_non_null(config);
    assert_non_null(config->subcommands);
    const struct cmdtab_cmd *cget = cmdtab_lookup_sub(config, "GeT", 3);
    assert_non_null(cget);
    assert_string_equal(cget->name, "config|get");
    assert_null(cmdtab_lookup_sub(config, "nosuch", 6));
    assert_null(cmdtab_lookup_sub(config, "config|get", 10));
    assert_null(cmdtab_lookup_sub(config, "", 0));
    assert_null(cmdtab_lookup_sub(get, "x", 1)); /* not a container */
    assert_null(cmdtab_lookup_sub(NULL, "x", 1));
    assert_non_null(cmdtab_lookup_sub(cmdtab_lookup("object", 6), "ENCODING", 8));
    assert_non_null(cmdtab_lookup_sub(cmdtab_lookup("client", 6), "kill", 4));
}

static void test_arity_and_data(void **state)
{
    (void)state;
    const struct cmdtab_cmd *get = cmdtab_lookup("get", 3);
    assert_int_equal(get->arity, 2);
    assert_false(cmdtab_arity_ok(get, 1));
    assert_true(cmdtab_arity_ok(get, 2));
    assert_false(cmdtab_arity_ok(get, 3));
    const struct cmdtab_cmd *mset = cmdtab_lookup("mset", 4);
    assert_int_equal(mset->arity, -3);
    assert_false(cmdtab_arity_ok(mset, 2));
    assert_true(cmdtab_arity_ok(mset, 3));
    assert_true(cmdtab_arity_ok(mset, 100));
    const struct cmdtab_cmd *config = cmdtab_lookup("config", 6);
    assert_false(cmdtab_arity_ok(config, 1)); /* a container alone fails, as in Redis */

    assert_true(get->flags & CMDTAB_READONLY);
    assert_true(get->flags & CMDTAB_FAST);
    assert_int_equal(get->categories, CMDTAB_CAT_READ | CMDTAB_CAT_STRING | CMDTAB_CAT_FAST);
    const struct cmdtab_cmd *flushall = cmdtab_lookup("flushall", 8);
    assert_true(flushall->categories & CMDTAB_CAT_DANGEROUS);
    assert_true(flushall->flags & CMDTAB_WRITE);
    assert_true(cmdtab_lookup("eval", 4)->flags & CMDTAB_MOVABLE_KEYS);
    assert_true(cmdtab_lookup("eval", 4)->flags & CMDTAB_NO_MANDATORY_KEYS);
    assert_true(cmdtab_lookup("auth", 4)->flags & CMDTAB_NO_AUTH);
    assert_int_equal(cmdtab_lookup("sort", 4)->getkeys, CMDTAB_GETKEYS_SORT);
    assert_int_equal(cmdtab_lookup("get", 3)->getkeys, CMDTAB_GETKEYS_NONE);
}

static void test_categories(void **state)
{
    (void)state;
    assert_string_equal(cmdtab_category_name(0), "keyspace");
    assert_string_equal(cmdtab_category_name(1), "read");
    assert_string_equal(cmdtab_category_name(20), "scripting");
    assert_null(cmdtab_category_name(CMDTAB_CATEGORY_COUNT));
    assert_int_equal(cmdtab_category_lookup("read", 4), CMDTAB_CAT_READ);
    assert_int_equal(cmdtab_category_lookup("READ", 4), CMDTAB_CAT_READ);
    assert_int_equal(cmdtab_category_lookup("Dangerous", 9), CMDTAB_CAT_DANGEROUS);
    assert_int_equal(cmdtab_category_lookup("readx", 4), CMDTAB_CAT_READ);
    assert_int_equal(cmdtab_category_lookup("rea", 3), 0);
    assert_int_equal(cmdtab_category_lookup("@read", 5), 0);
    assert_int_equal(cmdtab_category_lookup("nosuch", 6), 0);
    assert_int_equal(cmdtab_category_lookup("", 0), 0);
    for (unsigned i = 0; i < CMDTAB_CATEGORY_COUNT; i++) {
        const char *n = cmdtab_category_name(i);
        assert_int_equal(cmdtab_category_lookup(n, strlen(n)), 1u << i);
    }
}

/* respguard's roles (scripts/gen_cmdtab.py, ROLES): exactly these commands and subcommands
 * have one, and every other entry of the table, top level or subcommand, has none. */
static void test_roles(void **state)
{
    (void)state;
    static const struct {
        const char *name; /* "client|id": a subcommand */
        enum cmdtab_role role;
    } roles[] = {
        {"auth", CMDTAB_ROLE_AUTH},
        {"hello", CMDTAB_ROLE_HELLO},
        {"quit", CMDTAB_ROLE_QUIT},
        {"reset", CMDTAB_ROLE_RESET},
        {"multi", CMDTAB_ROLE_MULTI},
        {"exec", CMDTAB_ROLE_EXEC},
        {"discard", CMDTAB_ROLE_DISCARD},
        {"watch", CMDTAB_ROLE_WATCH},
        {"unwatch", CMDTAB_ROLE_UNWATCH},
        {"subscribe", CMDTAB_ROLE_SUBSCRIBE},
        {"psubscribe", CMDTAB_ROLE_SUBSCRIBE},
        {"ssubscribe", CMDTAB_ROLE_SUBSCRIBE},
        {"unsubscribe", CMDTAB_ROLE_UNSUBSCRIBE},
        {"punsubscribe", CMDTAB_ROLE_UNSUBSCRIBE},
        {"sunsubscribe", CMDTAB_ROLE_UNSUBSCRIBE},
        {"select", CMDTAB_ROLE_SELECT},
        {"monitor", CMDTAB_ROLE_MONITOR},
        {"wait", CMDTAB_ROLE_BLOCKING},
        {"xread", CMDTAB_ROLE_BLOCK_OPTION},
        {"xreadgroup", CMDTAB_ROLE_BLOCK_OPTION},
        {"client|id", CMDTAB_ROLE_CLIENT_ID},
        {"client|info", CMDTAB_ROLE_CLIENT_INFO},
        {"client|getname", CMDTAB_ROLE_CLIENT_GETNAME},
        {"client|setname", CMDTAB_ROLE_CLIENT_SETNAME},
        {"client|reply", CMDTAB_ROLE_CLIENT_REPLY},
        {"client|tracking", CMDTAB_ROLE_CONN_STATE},
        {"client|caching", CMDTAB_ROLE_CONN_STATE},
        {"script|debug", CMDTAB_ROLE_CONN_STATE},
        {"readonly", CMDTAB_ROLE_CONN_STATE},
        {"readwrite", CMDTAB_ROLE_CONN_STATE},
        {"asking", CMDTAB_ROLE_CONN_STATE},
        {"client|no-evict", CMDTAB_ROLE_STICKY_STATE},
    };
    const size_t n = sizeof(roles) / sizeof(roles[0]);
    bool seen[sizeof(roles) / sizeof(roles[0])] = {false};

    /* Each named entry is found through the lookups and has its role. */
    for (size_t i = 0; i < n; i++) {
        const char *bar = strchr(roles[i].name, '|');
        const struct cmdtab_cmd *cmd;
        if (bar) {
            const struct cmdtab_cmd *c = cmdtab_lookup(roles[i].name, (size_t)(bar - roles[i].name));
            assert_non_null(c);
            cmd = cmdtab_lookup_sub(c, bar + 1, strlen(bar + 1));
        } else {
            cmd = cmdtab_lookup(roles[i].name, strlen(roles[i].name));
        }
        if (!cmd)
            fail_msg("%s is not in the table", roles[i].name);
        assert_string_equal(cmd->name, roles[i].name);
        if (cmd->role != roles[i].role)
            fail_msg("%s: role %u, want %u", roles[i].name, cmd->role, roles[i].role);
    }

    /* Every entry of the table: a role only when listed above, each listed one met once. */
    size_t entries = 0, with_role = 0;
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const struct cmdtab_cmd *c = &cmdtab_commands[i];
        for (size_t j = 0; j <= c->subcommand_count; j++) {
            const struct cmdtab_cmd *e = j == 0 ? c : &c->subcommands[j - 1];
            size_t k = 0;
            while (k < n && strcmp(roles[k].name, e->name) != 0)
                k++;
            entries++;
            if (k == n) {
                if (e->role != CMDTAB_ROLE_NONE)
                    fail_msg("%s has role %u, want none", e->name, e->role);
                continue;
            }
            assert_false(seen[k]);
            seen[k] = true;
            assert_int_equal(e->role, roles[k].role);
            with_role++;
        }
    }
    for (size_t k = 0; k < n; k++)
        if (!seen[k])
            fail_msg("%s not met walking the table", roles[k].name);
    assert_int_equal(with_role, n);
    assert_true(entries > cmdtab_command_count); /* subcommands were walked too */
    assert_true(entries - with_role > 300);      /* and the rest has none */

    /* The container of a subcommand with a role has none itself; look-alikes have none. */
    assert_int_equal(cmdtab_lookup("client", 6)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup("script", 6)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup("blpop", 5)->role, CMDTAB_ROLE_NONE); /* Redis flags it */
    assert_int_equal(cmdtab_lookup("publish", 7)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup("spublish", 8)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup("xadd", 4)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup("waitaof", 7) ? cmdtab_lookup("waitaof", 7)->role : 0,
                     CMDTAB_ROLE_NONE);
    const struct cmdtab_cmd *client = cmdtab_lookup("client", 6);
    assert_int_equal(cmdtab_lookup_sub(client, "kill", 4)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup_sub(client, "list", 4)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup_sub(client, "pause", 5)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup_sub(client, "unblock", 7)->role, CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup_sub(cmdtab_lookup("script", 6), "load", 4)->role,
                     CMDTAB_ROLE_NONE);
    assert_int_equal(cmdtab_lookup_sub(cmdtab_lookup("pubsub", 6), "channels", 8)->role,
                     CMDTAB_ROLE_NONE);
    /* Upper case finds the same entries. */
    assert_int_equal(cmdtab_lookup("SUBSCRIBE", 9)->role, CMDTAB_ROLE_SUBSCRIBE);
    assert_int_equal(cmdtab_lookup_sub(client, "NO-EVICT", 8)->role, CMDTAB_ROLE_STICKY_STATE);
}

/* ------------------------------------------------------------------------------------------ */
/* Keys                                                                                       */
/* ------------------------------------------------------------------------------------------ */

static void test_keys_index_range(void **state)
{
    (void)state;
    expect_keys(WORDS("get", "k"), POS(1));
    expect_keys(WORDS("GET", "k"), POS(1));
    expect_keys(WORDS("del", "a", "b", "c"), POS(1, 2, 3));      /* lastkey -1 */
    expect_keys(WORDS("mset", "a", "1", "b", "2"), POS(1, 3));   /* keystep 2 */
    expect_keys(WORDS("mset", "a", "1", "b"), POS(1, 3));        /* as Redis: the last key */
    expect_keys(WORDS("msetnx", "a", "1", "b", "2", "c", "3"), POS(1, 3, 5));
    expect_keys(WORDS("rename", "a", "b"), POS(1, 2));
    expect_keys(WORDS("renamenx", "a", "b"), POS(1, 2));
    expect_keys(WORDS("copy", "a", "b"), POS(1, 2));
    expect_keys(WORDS("copy", "a", "b", "DB", "1", "REPLACE"), POS(1, 2));
    expect_keys(WORDS("smove", "s", "d", "m"), POS(1, 2));
    expect_keys(WORDS("lmove", "a", "b", "LEFT", "RIGHT"), POS(1, 2));
    expect_keys(WORDS("blmove", "a", "b", "LEFT", "RIGHT", "0"), POS(1, 2));
    expect_keys(WORDS("rpoplpush", "a", "b"), POS(1, 2));
    expect_keys(WORDS("bitop", "AND", "d", "a", "b"), POS(2, 3, 4));
    expect_keys(WORDS("sunionstore", "d", "a", "b"), POS(1, 2, 3));
    expect_keys(WORDS("sinterstore", "d", "a"), POS(1, 2));
    expect_keys(WORDS("geosearchstore", "d", "s", "FROMMEMBER", "m", "BYRADIUS", "1", "m"),
                POS(1, 2));
    expect_keys(WORDS("blpop", "a", "b", "0"), POS(1, 2));       /* lastkey -2 */
    expect_keys(WORDS("watch", "a", "b"), POS(1, 2));
    expect_keys(WORDS("pfmerge", "d", "a", "b"), POS(1, 2, 3));
    expect_count(WORDS("ping"), 0);
    expect_count(WORDS("keys", "*"), 0);

    uint16_t f = first_key_flags(WORDS("mset", "a", "1"));
    assert_int_equal(f, CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    struct cmdv c;
    unsigned pos[MAXARGS];
    uint16_t flags[MAXARGS];
    cmdv_words(&c, WORDS("rename", "a", "b"));
    assert_int_equal(keys_of_cmdv(&c, pos, flags, NULL, NULL), 2);
    assert_int_equal(flags[0], CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_DELETE);
    assert_int_equal(flags[1], CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    cmdv_free(&c);
}

static void test_keys_after_subcommand(void **state)
{
    (void)state;
    expect_keys(WORDS("object", "encoding", "k"), POS(2));
    expect_keys(WORDS("OBJECT", "FREQ", "k"), POS(2));
    expect_keys(WORDS("memory", "usage", "k"), POS(2));
    expect_keys(WORDS("memory", "usage", "k", "SAMPLES", "5"), POS(2));
    expect_keys(WORDS("xinfo", "stream", "k"), POS(2));
    expect_keys(WORDS("xinfo", "consumers", "k", "g"), POS(2));
    expect_keys(WORDS("xgroup", "create", "k", "g", "$"), POS(2));
    expect_keys(WORDS("xgroup", "destroy", "k", "g"), POS(2));
    expect_count(WORDS("config", "get", "x"), 0);
    expect_count(WORDS("client", "list"), 0);
}

static void test_keys_keyword(void **state)
{
    (void)state;
    /* Forward search from startfrom, the last argument never searched. */
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "STORE", "d"), POS(1, 7));
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "store", "d"), POS(1, 7));
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "StoreDist", "d"), POS(1, 7));
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "STORE", "x", "STOREDIST", "y"),
                POS(1, 7, 9));
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "WITHDIST", "STORE"), POS(1));
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "STOREX", "d"), POS(1));
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "m", "STOR", "d"), POS(1));
    /* startfrom 6: "STORE" at 5 (the unit) is not the keyword. */
    expect_keys(WORDS("georadius", "k", "1", "2", "3", "STORE", "x", "y"), POS(1));
    expect_keys(WORDS("georadiusbymember", "k", "m", "1", "km", "STORE", "d"), POS(1, 6));

    /* Backward search (MIGRATE: startfrom -2), then its extractor (the spec is incomplete). */
    expect_keys(WORDS("migrate", "h", "1", "k", "0", "5"), POS(3));
    expect_keys(WORDS("migrate", "h", "1", "", "0", "5", "KEYS", "a", "b"), POS(7, 8));
    expect_keys(WORDS("migrate", "h", "1", "", "0", "5", "COPY", "REPLACE", "keys", "a"), POS(9));
    expect_keys(WORDS("migrate", "h", "1", "", "0", "5", "AUTH", "KEYS", "KEYS", "a"), POS(9));
    expect_keys(WORDS("migrate", "h", "1", "", "0", "5", "AUTH2", "u", "KEYS", "KEYS", "a"),
                POS(10));
    expect_count(WORDS("migrate", "h", "1", "k", "0", "5", "KEYS", "a"), 0); /* syntax error */
    expect_keys(WORDS("migrate", "h", "1", "k", "0", "5", "KEYS"), POS(3)); /* last: not searched */
    uint16_t f = first_key_flags(WORDS("migrate", "h", "1", "", "0", "5", "KEYS", "a"));
    assert_int_equal(f, CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_DELETE);

    /* XREAD: everything after STREAMS split in half (limit 2). */
    expect_keys(WORDS("xread", "STREAMS", "a", "0"), POS(2));
    expect_keys(WORDS("xread", "COUNT", "1", "BLOCK", "0", "streams", "a", "b", "0", "0"),
                POS(6, 7));
    expect_keys(WORDS("xread", "STREAMS", "a", "b", "c"), POS(2)); /* odd: as Redis */
    expect_keys(WORDS("xreadgroup", "GROUP", "g", "c", "STREAMS", "s", "0"), POS(5));
    /* startfrom 4 skips a group or consumer called "streams" */
    expect_keys(WORDS("xreadgroup", "GROUP", "streams", "streams", "STREAMS", "s", "0"), POS(5));
    /* The spec fails (nothing after the last STREAMS): Redis's xreadGetKeys answers. */
    expect_keys(WORDS("xreadgroup", "STREAMS", "a", "b", "c", "d", "STREAMS", "x"), POS(2, 3, 4));
    expect_count(WORDS("xread", "COUNT", "1", "X", "STREAMS"), 0);
}

static void test_keys_keyword_nul(void **state)
{
    (void)state;
    /* Redis compares keywords as C strings: "STORE\0junk" is STORE, "\0STORE" is not. */
    struct word w[] = {{"georadius", 9}, {"k", 1}, {"1", 1}, {"2", 1}, {"3", 1}, {"m", 1},
                       {"STORE\0junk", 10}, {"d", 1}};
    struct cmdv c;
    unsigned pos[MAXARGS];
    cmdv_init(&c, w, 8);
    assert_int_equal(keys_of_cmdv(&c, pos, NULL, NULL, NULL), 2);
    assert_int_equal(pos[1], 7);
    cmdv_free(&c);
    w[6].s = "\0STORE";
    w[6].len = 6;
    cmdv_init(&c, w, 8);
    assert_int_equal(keys_of_cmdv(&c, pos, NULL, NULL, NULL), 1);
    cmdv_free(&c);
    /* SET k v "get\0x": the GET option to Redis's setGetKeys */
    struct word s[] = {{"set", 3}, {"k", 1}, {"v", 1}, {"get\0x", 5}};
    uint16_t flags[MAXARGS];
    cmdv_init(&c, s, 4);
    assert_int_equal(keys_of_cmdv(&c, pos, flags, NULL, NULL), 1);
    assert_int_equal(flags[0], CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE);
    cmdv_free(&c);
}

static void test_keys_keynum(void **state)
{
    (void)state;
    expect_keys(WORDS("eval", "s", "2", "a", "b", "x"), POS(3, 4));
    expect_keys(WORDS("EVALSHA", "s", "1", "a"), POS(3));
    expect_keys(WORDS("fcall", "f", "1", "a", "x"), POS(3));
    expect_keys(WORDS("fcall_ro", "f", "2", "a", "b"), POS(3, 4));
    expect_count(WORDS("eval", "s", "0"), 0);
    expect_count(WORDS("eval", "s", "0", "x", "y"), 0);
    expect_keys(WORDS("zunionstore", "d", "2", "a", "b"), POS(1, 3, 4));
    expect_keys(WORDS("zinterstore", "d", "1", "a", "WEIGHTS", "2"), POS(1, 3));
    expect_keys(WORDS("zdiffstore", "d", "2", "a", "b"), POS(1, 3, 4));
    expect_count(WORDS("zunionstore", "d", "0", "a"), 0); /* as Redis: not even d */
    expect_keys(WORDS("zunion", "2", "a", "b", "WITHSCORES"), POS(2, 3));
    expect_keys(WORDS("zintercard", "1", "a", "LIMIT", "1"), POS(2));
    expect_keys(WORDS("sintercard", "2", "a", "b", "LIMIT", "2"), POS(2, 3));
    expect_keys(WORDS("lmpop", "2", "a", "b", "LEFT"), POS(2, 3));
    expect_keys(WORDS("blmpop", "0", "2", "a", "b", "LEFT"), POS(3, 4));
    expect_keys(WORDS("zmpop", "1", "a", "MIN"), POS(2));
    expect_keys(WORDS("bzmpop", "0", "1", "a", "MAX", "COUNT", "2"), POS(3));

    /* Bad counts: extraction fails. */
    expect_count(WORDS("eval", "s", "-1"), -1);
    expect_count(WORDS("eval", "s", "-1", "a"), -1);
    expect_count(WORDS("eval", "s", "abc", "a"), -1);
    expect_count(WORDS("eval", "s", "2abc", "a", "b"), -1);
    expect_count(WORDS("eval", "s", "1.0", "a"), -1);
    expect_count(WORDS("eval", "s", "+1", "a"), -1);
    expect_count(WORDS("eval", "s", "01", "a"), -1);
    expect_count(WORDS("eval", "s", " 1", "a"), -1);
    expect_count(WORDS("eval", "s", "1 ", "a"), -1);
    expect_count(WORDS("eval", "s", "", "a"), -1);
    expect_count(WORDS("eval", "s", "-0"), -1);
    expect_count(WORDS("eval", "s", "3", "a", "b"), -1);            /* more than there are */
    expect_count(WORDS("eval", "s", "4294967297", "a", "b"), -1);   /* Redis: (int) -> 1 */
    expect_count(WORDS("eval", "s", "2147483648", "a"), -1);
    expect_count(WORDS("eval", "s", "9223372036854775807", "a"), -1);
    expect_count(WORDS("eval", "s", "9223372036854775808", "a"), -1);
    expect_count(WORDS("eval", "s", "99999999999999999999999999999999", "a"), -1);
    expect_count(WORDS("zunionstore", "d", "-2", "a", "b"), -1);
    expect_count(WORDS("zunionstore", "d", "3", "a", "b"), -1);
    expect_count(WORDS("lmpop", "x", "a", "LEFT"), -1);
    expect_count(WORDS("blmpop", "0", "5", "a", "LEFT"), -1);

    struct word w[] = {{"eval", 4}, {"s", 1}, {"1\0", 2}, {"a", 1}};
    struct cmdv c;
    unsigned pos[MAXARGS];
    cmdv_init(&c, w, 4);
    assert_int_equal(keys_of_cmdv(&c, pos, NULL, NULL, NULL), -1);
    cmdv_free(&c);
}

static void test_keys_extractors(void **state)
{
    (void)state;
    struct cmdv c;
    unsigned pos[MAXARGS], notkeys[MAXARGS];
    uint16_t flags[MAXARGS];
    size_t nk;

    /* SORT: the key, the last STORE; BY/GET patterns as NOT_KEY entries. */
    expect_keys(WORDS("sort", "k"), POS(1));
    expect_keys(WORDS("sort", "k", "STORE", "d"), POS(1, 3));
    expect_keys(WORDS("sort", "k", "store", "a", "STORE", "b"), POS(1, 5));
    expect_keys(WORDS("sort", "k", "STORE", "STORE", "x"), POS(1, 4));
    expect_keys(WORDS("sort", "k", "LIMIT", "0", "1", "STORE", "d"), POS(1, 6));
    expect_keys(WORDS("sort", "k", "LIMIT", "STORE", "x"), POS(1));
    expect_keys(WORDS("sort", "k", "BY", "STORE", "x"), POS(1));
    expect_keys(WORDS("sort", "k", "STORE"), POS(1));
    cmdv_words(&c, WORDS("sort", "k", "BY", "w_*", "GET", "#", "GET", "o_*", "STORE", "d"));
    assert_int_equal(keys_of_cmdv(&c, pos, flags, notkeys, &nk), 2);
    assert_int_equal(pos[0], 1);
    assert_int_equal(flags[0], CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS);
    assert_int_equal(pos[1], 9);
    assert_int_equal(flags[1], CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    assert_int_equal(nk, 3);
    assert_int_equal(notkeys[0], 3);
    assert_int_equal(notkeys[1], 5);
    assert_int_equal(notkeys[2], 7);
    cmdv_free(&c);
    cmdv_words(&c, WORDS("sort_ro", "k", "ALPHA", "BY", "p", "DESC"));
    assert_int_equal(keys_of_cmdv(&c, pos, flags, notkeys, &nk), 1);
    assert_int_equal(nk, 1);
    assert_int_equal(notkeys[0], 4);
    cmdv_free(&c);
    /* SORT_RO has no STORE: parsing stops there, as SORT_RO's own parser would refuse it. */
    cmdv_words(&c, WORDS("sort_ro", "k", "STORE", "d", "BY", "p"));
    assert_int_equal(keys_of_cmdv(&c, pos, flags, notkeys, &nk), 1);
    assert_int_equal(nk, 0);
    cmdv_free(&c);

    /* SET and BITFIELD: flags depend on the options (variable flags). */
    assert_int_equal(first_key_flags(WORDS("set", "k", "v")), CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    assert_int_equal(first_key_flags(WORDS("set", "k", "v", "EX", "1", "GET")),
                     CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE);
    assert_int_equal(first_key_flags(WORDS("set", "k", "get")), CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    assert_int_equal(first_key_flags(WORDS("bitfield", "k")), CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS);
    assert_int_equal(first_key_flags(WORDS("bitfield", "k", "GET", "u8", "0", "OVERFLOW", "SAT")),
                     CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS);
    assert_int_equal(first_key_flags(WORDS("bitfield", "k", "GET", "u8", "0", "SET", "u8", "0",
                                           "1")),
                     CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE);
    assert_int_equal(first_key_flags(WORDS("bitfield", "k", "GET", "u8")),
                     CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE);

    /* Extractors give Redis's flags: EVAL's fallback keys have none. */
    assert_int_equal(first_key_flags(WORDS("eval", "s", "1", "a")),
                     CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE);
    assert_int_equal(first_key_flags(WORDS("xreadgroup", "STREAMS", "a", "b", "c", "d",
                                           "STREAMS", "x")), 0);
}

static void test_keys_not_key_specs(void **state)
{
    (void)state;
    struct cmdv c;
    unsigned pos[MAXARGS], notkeys[MAXARGS];
    size_t nk;
    cmdv_words(&c, WORDS("spublish", "ch", "msg"));
    assert_int_equal(keys_of_cmdv(&c, pos, NULL, notkeys, &nk), 0);
    assert_int_equal(nk, 1);
    assert_int_equal(notkeys[0], 1);
    cmdv_free(&c);
    cmdv_words(&c, WORDS("ssubscribe", "a", "b"));
    assert_int_equal(keys_of_cmdv(&c, pos, NULL, notkeys, &nk), 0);
    assert_int_equal(nk, 2);
    cmdv_free(&c);
    /* SUNSUBSCRIBE alone: the spec cannot apply, which is not an error for NOT_KEY specs. */
    cmdv_words(&c, WORDS("sunsubscribe"));
    assert_int_equal(keys_of_cmdv(&c, pos, NULL, notkeys, &nk), 0);
    assert_int_equal(nk, 0);
    cmdv_free(&c);
}

static void test_keys_cap(void **state)
{
    (void)state;
    struct cmdv c;
    cmdv_words(&c, WORDS("del", "a", "b", "c", "d"));
    const struct cmdtab_cmd *del = cmdtab_lookup("del", 3);
    struct cmdtab_key keys[3] = {{0, 0}, {0, 0}, {77, 77}};
    assert_int_equal(cmdtab_get_keys(del, c.argc, c.argv, keys, 2), 4);
    assert_int_equal(keys[0].pos, 1);
    assert_int_equal(keys[1].pos, 2);
    assert_int_equal(keys[2].pos, 77); /* untouched */
    assert_int_equal(cmdtab_get_keys(del, c.argc, c.argv, NULL, 0), 4);
    assert_int_equal(cmdtab_get_keys(del, c.argc, c.argv, NULL, 5), 4);
    assert_int_equal(cmdtab_get_keys(NULL, c.argc, c.argv, keys, 3), -1);
    assert_int_equal(cmdtab_get_keys(del, 0, c.argv, keys, 3), -1);
    cmdv_free(&c);
}

/* Every command and subcommand, with argument counts from 1 to 9 (arity ignored) and short
 * arguments: empty (NULL pointer), one byte, and prefixes of the keywords extractors look for.
 * Nothing may crash or read past an argument (ASan), and every position is inside argv. */
static void test_keys_short_arguments(void **state)
{
    (void)state;
    static const struct word pool[] = {
        {"", 0}, {"s", 1}, {"S", 1}, {"0", 1}, {"1", 1}, {"2", 1}, {"-", 1}, {"st", 2},
        {"STOR", 4}, {"STORE", 5}, {"STREAM", 6}, {"STREAMS", 7}, {"KEY", 3}, {"KEYS", 4},
        {"G", 1}, {"GE", 2}, {"GET", 3}, {"B", 1}, {"BY", 2}, {"LIMI", 4}, {"LIMIT", 5},
        {"AUTH", 4}, {"AUTH2", 5}, {"GROUP", 5}, {"BLOCK", 5}, {"COUNT", 5}, {"\0", 1},
        {"STOREDIS", 8}, {"STOREDIST", 9}, {"SET", 3}, {"INCRB", 5}, {"OVERFLOW", 8},
    };
    const size_t npool = sizeof pool / sizeof pool[0];
    struct cmdtab_key keys[MAXARGS];
    struct cmdtab_channel ch[MAXARGS];
    unsigned seed = 12345;
    size_t runs = 0;

    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const struct cmdtab_cmd *top = &cmdtab_commands[i];
        size_t nsub = top->subcommand_count;
        for (size_t s = 0; s <= nsub; s++) {
            const struct cmdtab_cmd *cmd = s < nsub ? &top->subcommands[s] : top;
            for (size_t argc = 1; argc <= 9; argc++) {
                for (int round = 0; round < 12; round++) {
                    struct word w[MAXARGS];
                    w[0].s = top->name;
                    w[0].len = strlen(top->name);
                    for (size_t a = 1; a < argc; a++) {
                        seed = seed * 1103515245u + 12345u;
                        w[a] = pool[(seed >> 16) % npool];
                    }
                    struct cmdv c;
                    cmdv_init(&c, w, argc);
                    int n = cmdtab_get_keys(cmd, c.argc, c.argv, keys, MAXARGS);
                    assert_true(n >= -1 && n < MAXARGS);
                    for (int k = 0; k < n; k++)
                        assert_true(keys[k].pos >= 1 && keys[k].pos < argc);
                    int nc = cmdtab_get_channels(cmd, c.argc, c.argv, ch, MAXARGS);
                    assert_true(nc >= 0 && (size_t)nc < argc + 1);
                    for (int k = 0; k < nc; k++)
                        assert_true(ch[k].pos >= 1 && ch[k].pos < argc);
                    cmdv_free(&c);
                    runs++;
                }
            }
        }
    }
    assert_true(runs > 10000);
}

/* ------------------------------------------------------------------------------------------ */
/* Channels                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int channels_of(const char *const *w, size_t n, struct cmdtab_channel *out)
{
    struct cmdv c;
    cmdv_words(&c, w, n);
    const struct cmdtab_cmd *cmd = resolve(&c);
    assert_non_null(cmd);
    int got = cmdtab_get_channels(cmd, c.argc, c.argv, out, MAXARGS);
    cmdv_free(&c);
    return got;
}

static void test_channels(void **state)
{
    (void)state;
    struct cmdtab_channel ch[MAXARGS];

    assert_int_equal(channels_of(WORDS("publish", "c", "m"), ch), 1);
    assert_int_equal(ch[0].pos, 1);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_PUBLISH);
    assert_int_equal(channels_of(WORDS("spublish", "c", "m"), ch), 1);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_PUBLISH);

    assert_int_equal(channels_of(WORDS("subscribe", "a", "b", "c"), ch), 3);
    assert_int_equal(ch[2].pos, 3);
    assert_int_equal(ch[2].flags, CMDTAB_CHANNEL_SUBSCRIBE);
    assert_int_equal(channels_of(WORDS("SSUBSCRIBE", "a"), ch), 1);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_SUBSCRIBE);
    assert_int_equal(channels_of(WORDS("psubscribe", "a*", "b?"), ch), 2);
    assert_int_equal(ch[1].flags, CMDTAB_CHANNEL_PATTERN | CMDTAB_CHANNEL_SUBSCRIBE);

    assert_int_equal(channels_of(WORDS("unsubscribe"), ch), 0);
    assert_int_equal(channels_of(WORDS("unsubscribe", "a", "b"), ch), 2);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_UNSUBSCRIBE);
    assert_int_equal(channels_of(WORDS("sunsubscribe", "a"), ch), 1);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_UNSUBSCRIBE);
    assert_int_equal(channels_of(WORDS("punsubscribe", "a*"), ch), 1);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_PATTERN | CMDTAB_CHANNEL_UNSUBSCRIBE);

    assert_int_equal(channels_of(WORDS("pubsub", "numsub", "a", "b"), ch), 2);
    assert_int_equal(ch[0].pos, 2);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_INSPECT);
    assert_int_equal(channels_of(WORDS("pubsub", "shardnumsub", "a"), ch), 1);
    assert_int_equal(channels_of(WORDS("pubsub", "channels", "a*"), ch), 1);
    assert_int_equal(ch[0].flags, CMDTAB_CHANNEL_INSPECT | CMDTAB_CHANNEL_PATTERN);
    assert_int_equal(channels_of(WORDS("pubsub", "channels"), ch), 0);
    assert_int_equal(channels_of(WORDS("pubsub", "numpat"), ch), 0);

    assert_int_equal(channels_of(WORDS("get", "k"), ch), 0);
    assert_int_equal(channels_of(WORDS("eval", "s", "0"), ch), 0);

    /* Room for fewer: the count is still the full one. */
    struct cmdv c;
    cmdv_words(&c, WORDS("subscribe", "a", "b", "c"));
    const struct cmdtab_cmd *sub = cmdtab_lookup("subscribe", 9);
    assert_int_equal(cmdtab_get_channels(sub, c.argc, c.argv, ch, 1), 3);
    assert_int_equal(cmdtab_get_channels(sub, c.argc, c.argv, NULL, 0), 3);
    cmdv_free(&c);
}

/* The server-wide class, derived from the table: a regenerated table that adds to it fails
 * here until the README's table and this list say what the new command does for a tenant. */
static void test_server_wide_class(void **state)
{
    (void)state;
    static const char expected[] =
        "acl|deluser acl|dryrun acl|getuser acl|list acl|load acl|log acl|save acl|setuser acl|users acl|whoami "
        "asking bgrewriteaof bgsave cluster|addslots cluster|addslotsrange cluster|bumpepoch "
        "cluster|count-failure-reports cluster|countkeysinslot cluster|delslots cluster|delslotsrange "
        "cluster|failover cluster|flushslots cluster|forget cluster|getkeysinslot cluster|info cluster|links "
        "cluster|meet cluster|myid cluster|nodes cluster|replicas cluster|replicate cluster|reset "
        "cluster|saveconfig cluster|set-config-epoch cluster|setslot cluster|shards cluster|slaves cluster|slots "
        "config|get config|resetstat config|rewrite config|set dbsize debug failover flushall flushdb "
        "function|delete function|dump function|flush function|kill function|list function|load "
        "function|restore function|stats info keys lastsave latency|doctor latency|graph latency|histogram "
        "latency|history latency|latest latency|reset memory|doctor memory|malloc-stats memory|purge "
        "memory|stats module|list module|load module|loadex module|unload monitor pfselftest psync "
        "pubsub|numpat randomkey readonly readwrite replconf replicaof role save scan script|debug "
        "script|exists script|flush script|kill script|load shutdown slaveof slowlog|get slowlog|len "
        "slowlog|reset swapdb sync ";
    char got[sizeof expected + 4096];
    size_t n = 0;
    for (size_t i = 0; i < cmdtab_command_count; i++) {
        const struct cmdtab_cmd *top = &cmdtab_commands[i];
        assert_false(top->subcommands && cmdtab_server_wide(top));
        size_t nsub = top->subcommands ? top->subcommand_count : 1;
        for (size_t j = 0; j < nsub; j++) {
            const struct cmdtab_cmd *c = top->subcommands ? &top->subcommands[j] : top;
            if (cmdtab_server_wide(c))
                n += (size_t)snprintf(got + n, sizeof got - n, "%s ", c->name);
        }
    }
    assert_string_equal(got, expected);
    assert_false(cmdtab_server_wide(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_sorted),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_arity_and_data),
        cmocka_unit_test(test_categories),
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_keys_index_range),
        cmocka_unit_test(test_keys_after_subcommand),
        cmocka_unit_test(test_keys_keyword),
        cmocka_unit_test(test_keys_keyword_nul),
        cmocka_unit_test(test_keys_keynum),
        cmocka_unit_test(test_keys_extractors),
        cmocka_unit_test(test_keys_not_key_specs),
        cmocka_unit_test(test_keys_cap),
        cmocka_unit_test(test_keys_short_arguments),
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_server_wide_class),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
