/*
 * cmdtab: lookups in the generated command table (src/cmdtab_data.c) and key/channel extraction
 * as Redis 7.0 does it for COMMAND GETKEYS and ACL checks.
 *
 * Key extraction follows Redis's getKeysFromCommandWithSpecs: the key specs first (begin at an
 * index or after a keyword; then a range or a key count), and the command's own extractor (what
 * Redis calls its getkeys_proc) when a spec cannot be applied or the specs have variable flags.
 * The few deliberate differences are listed in include/respguard/cmdtab.h.
 *
 * What it must not do: allocate, keep state, or treat arguments as C strings. Arguments are
 * byte views (struct resp_arg) that are not NUL-terminated and may contain NUL bytes; every read
 * is bounded by the argument's length. Only the table's own names are C strings.
 */
#include "respguard/cmdtab.h"

#include <limits.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Bytes                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* ASCII lower case, as strcasecmp does in the C locale Redis runs in. */
static unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Does the argument equal word, the way Redis's strcasecmp(argv[i]->ptr, word) sees it? Case is
 * ignored and the argument ends at its first NUL byte, because Redis compares the C string: an
 * argument "STORE\0junk" is the STORE keyword to Redis (to its key extraction and to the command
 * itself), so it must be to us too, or a key would slip past unchecked. */
static bool arg_is(const struct resp_arg *a, const char *word)
{
    size_t i = 0;
    for (; word[i] != '\0'; i++) {
        if (i >= a->len || fold((unsigned char)a->ptr[i]) != fold((unsigned char)word[i]))
            return false;
    }
    return i == a->len || a->ptr[i] == '\0';
}

/* A key count as Redis's string2ll accepts it and only that: "0" or [1-9][0-9]*, optionally
 * after '-'. Returns false for anything else. Values beyond max are reported as max + 1 (the
 * caller only needs to know they are too large), so there is no overflow. */
static bool parse_count(const struct resp_arg *a, long long max, long long *out, bool *negative)
{
    const unsigned char *p = (const unsigned char *)a->ptr;
    size_t n = a->len, i = 0;

    *negative = false;
    if (n == 0)
        return false;
    if (n == 1 && p[0] == '0') {
        *out = 0;
        return true;
    }
    if (p[0] == '-') {
        *negative = true;
        i = 1;
    }
    if (i >= n || p[i] < '1' || p[i] > '9')
        return false;
    long long v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        if (v <= max)
            v = v * 10 + (p[i] - '0');
    }
    /* string2ll also refuses values beyond the range of long long; for a count any value that
     * large is refused anyway, so the exact bound does not matter. */
    *out = v > max ? max + 1 : v;
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Lookup                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Compares a lower-case table name with arg folded to lower case, byte by byte: the order the
 * generator sorted the table in. An argument with a NUL byte never equals a name. */
static int cmp_name(const char *tab, const char *arg, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char t = (unsigned char)tab[i];
        unsigned char a = fold((unsigned char)arg[i]);
        if (t == '\0')
            return -1;
        if (t != a)
            return t < a ? -1 : 1;
    }
    return tab[len] == '\0' ? 0 : 1;
}

/* Binary search in cmds[0..n) sorted by name; each name is compared from offset skip (the
 * "container|" prefix of subcommands). */
static const struct cmdtab_cmd *search(const struct cmdtab_cmd *cmds, size_t n, size_t skip,
                                       const char *name, size_t len)
{
    size_t lo = 0, hi = n;
    if (name == NULL && len > 0)
        return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_name(cmds[mid].name + skip, name, len);
        if (c == 0)
            return &cmds[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const struct cmdtab_cmd *cmdtab_lookup(const char *name, size_t len)
{
    return search(cmdtab_commands, cmdtab_command_count, 0, name, len);
}

bool cmdtab_is(const struct cmdtab_cmd *cmd, const char *name, size_t len)
{
    return cmd != NULL && (name != NULL || len == 0) && cmp_name(cmd->name, name, len) == 0;
}

const struct cmdtab_cmd *cmdtab_lookup_sub(const struct cmdtab_cmd *container, const char *name,
                                           size_t len)
{
    if (container == NULL || container->subcommands == NULL)
        return NULL;
    /* Subcommand names are "container|sub": compare the part after the bar. */
    return search(container->subcommands, container->subcommand_count,
                  strlen(container->name) + 1, name, len);
}

bool cmdtab_arity_ok(const struct cmdtab_cmd *cmd, size_t argc)
{
    if (cmd->arity >= 0)
        return argc == (size_t)cmd->arity;
    return argc >= (size_t)(-(long)cmd->arity);
}

/* ------------------------------------------------------------------------------------------ */
/* ACL categories                                                                             */
/* ------------------------------------------------------------------------------------------ */

static const char *const category_names[CMDTAB_CATEGORY_COUNT] = {
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous",
    "connection", "transaction", "scripting",
};

const char *cmdtab_category_name(unsigned bit_index)
{
    return bit_index < CMDTAB_CATEGORY_COUNT ? category_names[bit_index] : NULL;
}

uint32_t cmdtab_category_lookup(const char *name, size_t len)
{
    for (unsigned i = 0; i < CMDTAB_CATEGORY_COUNT; i++) {
        if (name != NULL && cmp_name(category_names[i], name, len) == 0)
            return 1u << i;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Keys                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Where results go: entries beyond cap are counted, not written. */
struct keyout {
    struct cmdtab_key *keys;
    size_t cap;
    size_t n;
};

static void put_key(struct keyout *o, long pos, uint16_t flags)
{
    if (o->n < o->cap) {
        o->keys[o->n].pos = (uint32_t)pos;
        o->keys[o->n].flags = flags;
    }
    o->n++;
}

/* Applies one key spec (Redis's getKeysUsingKeySpecs, one iteration). Returns 0 when the spec
 * was applied (possibly finding nothing: a keyword that is absent), -1 when it cannot be. */
static int apply_spec(const struct cmdtab_keyspec *s, long argc, const struct resp_arg *argv,
                      struct keyout *o)
{
    long first = 0, last, step;

    if (s->begin == CMDTAB_BEGIN_INDEX) {
        if (s->index < 1)
            return -1;
        first = s->index;
    } else if (s->begin == CMDTAB_BEGIN_KEYWORD) {
        /* Positive startfrom: search forward from it up to, not including, the last argument;
         * otherwise backward from argc + startfrom down to, not including, argument 1. The
         * direction follows from where the search starts and ends, as in Redis. */
        long start = s->startfrom > 0 ? s->startfrom : argc + s->startfrom;
        long end = s->startfrom > 0 ? argc - 1 : 1;
        if (s->keyword == NULL)
            return -1;
        for (long i = start; i != end; i = start <= end ? i + 1 : i - 1) {
            if (i >= argc || i < 1)
                break;
            if (arg_is(&argv[i], s->keyword)) {
                first = i + 1;
                break;
            }
        }
        if (first == 0)
            return 0; /* keyword absent: this spec has no keys */
    } else {
        return -1;
    }

    if (s->find == CMDTAB_FIND_RANGE) {
        step = s->keystep;
        if (s->lastkey >= 0) {
            last = first + s->lastkey;
        } else if (s->limit == 0) {
            last = argc + s->lastkey;
        } else {
            /* "The keys are the first 1/limit of what follows" (XREAD STREAMS: limit 2). Redis
             * asserts lastkey == -1 here. C division truncates as Redis's does. */
            if (s->lastkey != -1 || s->limit < 0)
                return -1;
            last = first + ((argc - first) / s->limit + s->lastkey);
        }
    } else if (s->find == CMDTAB_FIND_KEYNUM) {
        step = s->step;
        /* Redis checks only keynumidx < argc and then reads argv[first + keynumidx]; the sum is
         * what must be in bounds. */
        long at = first + s->keynumidx;
        if (s->keynumidx < 0 || at >= argc)
            return -1;
        long long numkeys;
        bool negative;
        if (!parse_count(&argv[at], argc, &numkeys, &negative) || negative)
            return -1;
        first += s->firstkey;
        /* numkeys <= argc + 1, so no overflow; Redis truncates to int here, we do not need to. */
        last = first + (long)numkeys - 1;
    } else {
        return -1;
    }

    /* Out of bounds: a syntax error in the command (Redis: invalid spec). */
    if (last >= argc || last < first || first >= argc || step < 1)
        return -1;
    for (long i = first; i <= last; i += step)
        put_key(o, i, s->flags);

    /* An incomplete spec's keys are kept only when Redis is asked for partial results, which
     * COMMAND GETKEYS and the ACL do not do: the extractor answers instead. */
    if (s->flags & CMDTAB_KEY_INCOMPLETE)
        return -1;
    return 0;
}

/* Redis's genericGetKeys: [store] count key... with keys every step arguments from first. Redis
 * reads the count with atoi() and answers "no keys" for anything below 1 or beyond the
 * arguments; we take only canonical counts (see cmdtab.h): 0 gives no keys, anything else that
 * could not be applied is a failure. */
static int getkeys_numkeys(long store, long count_at, long first, long step, long argc,
                           const struct resp_arg *argv, struct keyout *o)
{
    long long num;
    bool negative;
    if (count_at >= argc || !parse_count(&argv[count_at], argc, &num, &negative) || negative)
        return -1;
    if (num == 0)
        return 0;
    if (first > argc || num > (argc - first) / step)
        return -1;
    for (long i = 0; i < (long)num; i++)
        put_key(o, first + i * step, 0);
    if (store)
        put_key(o, store, 0);
    return 0;
}

/* The BY and GET patterns of SORT/SORT_RO, parsed as Redis's sortCommandGeneric parses the
 * options (it stops at the first option it does not know), reported as NOT_KEY entries. */
static void sort_patterns(bool readonly, long argc, const struct resp_arg *argv,
                          struct keyout *o)
{
    const uint16_t flags = CMDTAB_KEY_NOT_KEY | CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS;
    for (long j = 2; j < argc; j++) {
        long left = argc - j - 1;
        if (arg_is(&argv[j], "asc") || arg_is(&argv[j], "desc") || arg_is(&argv[j], "alpha")) {
            continue;
        } else if (arg_is(&argv[j], "limit") && left >= 2) {
            j += 2;
        } else if (!readonly && arg_is(&argv[j], "store") && left >= 1) {
            j++;
        } else if ((arg_is(&argv[j], "by") || arg_is(&argv[j], "get")) && left >= 1) {
            put_key(o, j + 1, flags);
            j++;
        } else {
            break; /* Redis answers a syntax error here */
        }
    }
}

/* Redis's sortGetKeys: the sorted key, and the key after the last STORE. Options are skipped
 * with their arguments (LIMIT 2, GET 1, BY 1); any other word is taken to have none. */
static int getkeys_sort(long argc, const struct resp_arg *argv, struct keyout *o)
{
    long store = 0;
    for (long i = 2; i < argc; i++) {
        if (arg_is(&argv[i], "limit"))
            i += 2;
        else if (arg_is(&argv[i], "get") || arg_is(&argv[i], "by"))
            i += 1;
        else if (arg_is(&argv[i], "store") && i + 1 < argc)
            store = i + 1; /* not skipped: "STORE STORE x" stores into x, as in Redis */
    }
    put_key(o, 1, CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS);
    if (store)
        put_key(o, store, CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    return 0;
}

/* Redis's migrateGetKeys: argument 3, or with KEYS (searched from argument 6, skipping the
 * arguments of AUTH and AUTH2) everything after it, provided argument 3 is empty. */
static int getkeys_migrate(long argc, const struct resp_arg *argv, struct keyout *o)
{
    long first = 3, num = 1;
    if (argc < 4)
        return -1;
    for (long i = 6; i < argc; i++) {
        if (arg_is(&argv[i], "keys")) {
            if (argv[3].len > 0) { /* by length, as Redis: "\0" is not empty */
                num = 0; /* a syntax error: MIGRATE itself refuses it */
            } else {
                first = i + 1;
                num = argc - first;
            }
            break;
        }
        if (arg_is(&argv[i], "auth"))
            i += 1;
        else if (arg_is(&argv[i], "auth2"))
            i += 2;
    }
    for (long i = 0; i < num; i++)
        put_key(o, first + i, CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_DELETE);
    return 0;
}

/* Redis's georadiusGetKeys: the key, and the key after the last STORE or STOREDIST. */
static int getkeys_georadius(long argc, const struct resp_arg *argv, struct keyout *o)
{
    long stored = 0;
    for (long i = 5; i < argc; i++) {
        if ((arg_is(&argv[i], "store") || arg_is(&argv[i], "storedist")) && i + 1 < argc) {
            stored = i + 1;
            i++;
        }
    }
    put_key(o, 1, 0);
    if (stored)
        put_key(o, stored, 0);
    return 0;
}

/* Redis's xreadGetKeys: the options before STREAMS are parsed (BLOCK 1, COUNT 1, GROUP 2,
 * NOACK 0); the first half of what follows STREAMS are keys. No STREAMS, nothing after it or an
 * odd number of arguments: no keys. */
static int getkeys_xread(long argc, const struct resp_arg *argv, struct keyout *o)
{
    long streams = -1;
    for (long i = 1; i < argc; i++) {
        if (arg_is(&argv[i], "block") || arg_is(&argv[i], "count")) {
            i++;
        } else if (arg_is(&argv[i], "group")) {
            i += 2;
        } else if (arg_is(&argv[i], "noack")) {
            continue;
        } else if (arg_is(&argv[i], "streams")) {
            streams = i;
            break;
        } else {
            break;
        }
    }
    if (streams < 0)
        return 0;
    long num = argc - streams - 1;
    if (num == 0 || num % 2 != 0)
        return 0;
    for (long i = streams + 1; i < argc - num / 2; i++)
        put_key(o, i, 0);
    return 0;
}

/* Redis's setGetKeys: the key is read too when a GET option follows the value. */
static int getkeys_set(long argc, const struct resp_arg *argv, struct keyout *o)
{
    if (argc < 2)
        return -1;
    for (long i = 3; i < argc; i++) {
        if (arg_is(&argv[i], "get")) {
            put_key(o, 1, CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE);
            return 0;
        }
    }
    put_key(o, 1, CMDTAB_KEY_OW | CMDTAB_KEY_UPDATE);
    return 0;
}

/* Redis's bitfieldGetKeys: read-only while the operations are complete GETs (and OVERFLOWs);
 * a SET, an INCRBY or anything it cannot parse makes the key read-write. */
static int getkeys_bitfield(long argc, const struct resp_arg *argv, struct keyout *o)
{
    bool readonly = true;
    if (argc < 2)
        return -1;
    for (long i = 2; i < argc; i++) {
        long remaining = argc - i - 1;
        if (arg_is(&argv[i], "get") && remaining >= 2) {
            i += 2;
        } else if ((arg_is(&argv[i], "set") || arg_is(&argv[i], "incrby")) && remaining >= 3) {
            readonly = false;
            break;
        } else if (arg_is(&argv[i], "overflow") && remaining >= 1) {
            i += 1;
        } else {
            readonly = false;
            break;
        }
    }
    put_key(o, 1, readonly ? (CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS)
                           : (CMDTAB_KEY_RW | CMDTAB_KEY_ACCESS | CMDTAB_KEY_UPDATE));
    return 0;
}

static int run_getkeys(const struct cmdtab_cmd *cmd, long argc, const struct resp_arg *argv,
                       struct keyout *o)
{
    switch (cmd->getkeys) {
    case CMDTAB_GETKEYS_NUMKEYS_AT1:
        return getkeys_numkeys(0, 1, 2, 1, argc, argv, o);
    case CMDTAB_GETKEYS_NUMKEYS_AT2:
        return getkeys_numkeys(0, 2, 3, 1, argc, argv, o);
    case CMDTAB_GETKEYS_STORE_NUMKEYS_AT2:
        return getkeys_numkeys(1, 2, 3, 1, argc, argv, o);
    case CMDTAB_GETKEYS_SORT:
    case CMDTAB_GETKEYS_SORT_RO:
        if (argc < 2)
            return -1;
        if (cmd->getkeys == CMDTAB_GETKEYS_SORT)
            getkeys_sort(argc, argv, o);
        else
            put_key(o, 1, CMDTAB_KEY_RO | CMDTAB_KEY_ACCESS);
        return 0;
    case CMDTAB_GETKEYS_MIGRATE:
        return getkeys_migrate(argc, argv, o);
    case CMDTAB_GETKEYS_GEORADIUS:
        return argc < 2 ? -1 : getkeys_georadius(argc, argv, o);
    case CMDTAB_GETKEYS_XREAD:
        return getkeys_xread(argc, argv, o);
    case CMDTAB_GETKEYS_SET:
        return getkeys_set(argc, argv, o);
    case CMDTAB_GETKEYS_BITFIELD:
        return getkeys_bitfield(argc, argv, o);
    default:
        return -1;
    }
}

int cmdtab_get_keys(const struct cmdtab_cmd *cmd, size_t argc, const struct resp_arg *argv,
                    struct cmdtab_key *keys, size_t cap)
{
    struct keyout o = {.keys = keys, .cap = keys != NULL ? cap : 0, .n = 0};
    /* Positions are uint32_t and the count an int; no real request comes near either. */
    if (cmd == NULL || argc == 0 || argc > INT_MAX / 4)
        return -1;
    long n = (long)argc;

    bool has_keyspec = false, varflags = false;
    for (unsigned j = 0; j < cmd->keyspec_count; j++) {
        if (!(cmd->keyspecs[j].flags & CMDTAB_KEY_NOT_KEY))
            has_keyspec = true;
        if (cmd->keyspecs[j].flags & CMDTAB_KEY_VARIABLE_FLAGS)
            varflags = true;
    }

    /* Redis prefers the specs when some spec is a real key spec and none has variable flags;
     * otherwise it asks the extractor, and without one it finds no keys. NOT_KEY specs are
     * applied in any case, for the caller to see (cmdtab.h). */
    bool specs_ok = true;
    if (!has_keyspec || varflags) {
        if (cmd->getkeys != CMDTAB_GETKEYS_NONE)
            specs_ok = false;
        else if (varflags)
            return -1; /* flags that only an extractor could tell, and none: refuse */
    }
    if (specs_ok) {
        for (unsigned j = 0; j < cmd->keyspec_count; j++) {
            const struct cmdtab_keyspec *s = &cmd->keyspecs[j];
            size_t before = o.n;
            if (apply_spec(s, n, argv, &o) < 0) {
                if (s->flags & CMDTAB_KEY_NOT_KEY) {
                    o.n = before; /* Redis never looks at these: skip, do not fail */
                    continue;
                }
                specs_ok = false;
                break;
            }
        }
    }

    if (!specs_ok) {
        /* Like Redis, throw away what the specs found and ask the extractor, if any. */
        o.n = 0;
        if (run_getkeys(cmd, n, argv, &o) < 0)
            return -1;
    }
    if (cmd->getkeys == CMDTAB_GETKEYS_SORT || cmd->getkeys == CMDTAB_GETKEYS_SORT_RO)
        sort_patterns(cmd->getkeys == CMDTAB_GETKEYS_SORT_RO, n, argv, &o);
    return o.n > (size_t)INT_MAX ? -1 : (int)o.n;
}

/* ------------------------------------------------------------------------------------------ */
/* Channels                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Redis 7.0's channel table (db.c commands_with_channels), plus the PUBSUB introspection
 * subcommands that name channels (INSPECT, see cmdtab.h). count -1: every remaining argument. */
static const struct {
    const char *name;
    int start;
    int count;
    uint16_t flags;
} channel_specs[] = {
    {"subscribe", 1, -1, CMDTAB_CHANNEL_SUBSCRIBE},
    {"ssubscribe", 1, -1, CMDTAB_CHANNEL_SUBSCRIBE},
    {"unsubscribe", 1, -1, CMDTAB_CHANNEL_UNSUBSCRIBE},
    {"sunsubscribe", 1, -1, CMDTAB_CHANNEL_UNSUBSCRIBE},
    {"psubscribe", 1, -1, CMDTAB_CHANNEL_PATTERN | CMDTAB_CHANNEL_SUBSCRIBE},
    {"punsubscribe", 1, -1, CMDTAB_CHANNEL_PATTERN | CMDTAB_CHANNEL_UNSUBSCRIBE},
    {"publish", 1, 1, CMDTAB_CHANNEL_PUBLISH},
    {"spublish", 1, 1, CMDTAB_CHANNEL_PUBLISH},
    {"pubsub|numsub", 2, -1, CMDTAB_CHANNEL_INSPECT},
    {"pubsub|shardnumsub", 2, -1, CMDTAB_CHANNEL_INSPECT},
    {"pubsub|channels", 2, 1, CMDTAB_CHANNEL_INSPECT | CMDTAB_CHANNEL_PATTERN},
    {"pubsub|shardchannels", 2, 1, CMDTAB_CHANNEL_INSPECT | CMDTAB_CHANNEL_PATTERN},
};

int cmdtab_get_channels(const struct cmdtab_cmd *cmd, size_t argc, const struct resp_arg *argv,
                        struct cmdtab_channel *out, size_t cap)
{
    (void)argv; /* positions only: no argument is read */
    /* Every command with channel arguments is in the @pubsub category; the rest skip the
     * name comparisons. */
    if (cmd == NULL || !(cmd->categories & CMDTAB_CAT_PUBSUB) || argc > INT_MAX / 4)
        return 0;
    if (out == NULL)
        cap = 0;
    for (size_t k = 0; k < sizeof channel_specs / sizeof channel_specs[0]; k++) {
        if (strcmp(cmd->name, channel_specs[k].name) != 0)
            continue;
        size_t start = (size_t)channel_specs[k].start;
        size_t stop = channel_specs[k].count < 0 ? argc : start + (size_t)channel_specs[k].count;
        if (stop > argc)
            stop = argc;
        size_t n = 0;
        for (size_t i = start; i < stop; i++, n++) {
            if (n < cap) {
                out[n].pos = (uint32_t)i;
                out[n].flags = channel_specs[k].flags;
            }
        }
        return (int)n;
    }
    return 0;
}

/* What the class leaves out: they compute or describe something fixed, nothing of the server's
 * state or of other clients. */
static const char *const server_pure[] = {"time", "lolwut", "acl|cat", "acl|genpass", "cluster|keyslot"};
/* What it adds: @connection commands that change how a cluster routes the connection. */
static const char *const server_cluster_routing[] = {"readonly", "readwrite", "asking"};

static bool name_in(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return true;
    return false;
}

bool cmdtab_server_wide(const struct cmdtab_cmd *cmd)
{
    if (cmd == NULL || cmd->subcommands != NULL)
        return false;
    if (name_in(cmd->name, server_cluster_routing, sizeof server_cluster_routing / sizeof *server_cluster_routing))
        return true;
    if (cmd->keyspec_count > 0 || cmd->getkeys != CMDTAB_GETKEYS_NONE)
        return false;
    if (cmd->categories & (CMDTAB_CAT_CONNECTION | CMDTAB_CAT_TRANSACTION))
        return false;
    /* Channel arguments: ask the extractor with arguments in every position it may look at. */
    static const struct resp_arg some[8] = {{"x", 1}, {"x", 1}, {"x", 1}, {"x", 1},
                                            {"x", 1}, {"x", 1}, {"x", 1}, {"x", 1}};
    if (cmdtab_get_channels(cmd, 8, some, NULL, 0) > 0)
        return false;
    const char *bar = strchr(cmd->name, '|');
    if (bar && strcmp(bar + 1, "help") == 0)
        return false;
    return !name_in(cmd->name, server_pure, sizeof server_pure / sizeof *server_pure);
}

bool cmdtab_may_block(const struct cmdtab_cmd *cmd, size_t argc, const struct resp_arg *argv)
{
    switch ((enum cmdtab_role)cmd->role) {
    case CMDTAB_ROLE_BLOCKING: return true;
    case CMDTAB_ROLE_BLOCK_OPTION:
        /* XREAD/XREADGROUP block only with BLOCK before STREAMS. */
        for (size_t i = 1; i < argc; i++) {
            if (argv[i].len == 7 && strncasecmp(argv[i].ptr, "streams", 7) == 0)
                return false;
            if (argv[i].len == 5 && strncasecmp(argv[i].ptr, "block", 5) == 0)
                return true;
        }
        return false;
    default: return (cmd->flags & CMDTAB_BLOCKING) != 0;
    }
}
