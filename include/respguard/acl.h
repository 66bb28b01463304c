/*
 * acl: a user's Redis ACL rules (Redis 7.0's ACL SETUSER syntax), compiled once at config load,
 * and the verdict on one command: allowed, allowed with an appended argument, or refused with
 * the exact error Redis 7.0 would send.
 *
 * Rules (each a whitespace-separated token, keywords case-insensitive as in Redis): on, off,
 * >pass, <pass, #hash, !hash, nopass, resetpass, ~pattern, %R~pattern, %W~pattern, %RW~pattern,
 * allkeys, resetkeys, &pattern, allchannels, resetchannels, +cmd, -cmd, +cmd|sub, -cmd|sub,
 * +cmd|firstarg (Redis's deprecated first-argument rule, for commands without subcommands),
 * +@category, -@category, allcommands, nocommands, reset, clearselectors (a no-op: respguard
 * users never have selectors). Refused at load: selectors "(...)" and sanitize-payload /
 * skip-sanitize-payload (respguard cannot apply them). A user starts with nothing: off, no
 * password, -@all, no keys, no channels.
 *
 * Guard: commands named in guard.never_by_category ("flushall", "config" = every CONFIG
 * subcommand, "client|kill") are granted only by an explicit +name (+flushdb, +config,
 * +client|kill) that no later rule took back; +@all, allcommands and categories never grant
 * them, and -@dangerous, -name, nocommands and reset still remove them.
 *
 * The verdict follows Redis 7.0's processCommand: unknown command, unknown subcommand, arity,
 * then the ACL (command, then every key position with the read/write permission its key spec
 * needs, then channels). After Redis's own checks come respguard's documented differences:
 * what a proxy cannot see through is refused for restricted users, server-wide commands are
 * refused to tenants unless named, and INFO and ACL WHOAMI get scoped forms (listed in acl.c).
 *
 * Pure: no I/O, no globals, no allocation in acl_check. Passwords are stored only as SHA-256
 * hashes, as Redis does, and are compared in constant time.
 */
#ifndef RESPGUARD_ACL_H
#define RESPGUARD_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "respguard/cmdtab.h"
#include "respguard/crypto.h"
#include "respguard/resp.h"

/* Permissions of a key pattern, and marks computed at compile time. */
enum acl_pattern_flag {
    ACL_PATTERN_READ = 1u << 0,   /* %R~ (or ~) */
    ACL_PATTERN_WRITE = 1u << 1,  /* %W~ (or ~) */
    ACL_PATTERN_PREFIX = 1u << 2, /* a literal followed by one '*' (no other glob byte) */
};

struct acl_pattern {
    char *ptr; /* the pattern as written (bytes), NUL-terminated for convenience */
    size_t len;
    uint8_t flags; /* enum acl_pattern_flag; channels: 0 */
};

/* A first-argument rule: +select|0 lets SELECT run only with the argument "0". */
struct acl_firstarg {
    uint32_t id;
    char *arg;
};

enum acl_user_flag {
    ACL_USER_ALLKEYS = 1u << 0,     /* allkeys / ~*: keys are not even extracted (Redis) */
    ACL_USER_ALLCHANNELS = 1u << 1, /* allchannels / &* */
    ACL_USER_READ_ALL = 1u << 2,    /* allkeys, or a pattern "*" with read permission */
    ACL_USER_RW_ALL = 1u << 3,      /* allkeys, or a pattern "*" with read and write permission */
};

/* A compiled user. Owned by the caller, released with acl_user_deinit; immutable after
 * acl_user_compile, so one user may be read by many threads. */
struct acl_user {
    char *name;
    bool enabled;      /* on / off */
    bool nopass;       /* any password is accepted */
    uint8_t (*hashes)[CRYPTO_SHA256_LEN];
    size_t hash_count;

    /* Commands. An id is a top-level command's index in cmdtab_commands, or for a subcommand
     * sub_base[its container's index] + its index in the container's table. */
    uint32_t id_count;
    uint32_t *sub_base;   /* cmdtab_command_count entries */
    uint64_t *allowed;    /* Redis's bitmap: what Redis would let this user run */
    uint64_t *named;      /* granted by an explicit +name still standing */
    uint64_t *effective;  /* allowed, less guarded commands that are not named */
    struct acl_firstarg *firstargs;
    size_t firstarg_count;
    uint8_t *special;     /* per id: which documented difference applies (private to acl.c) */

    /* Keys and channels. */
    uint32_t flags;       /* enum acl_user_flag */
    struct acl_pattern *keys;
    size_t key_count;
    struct acl_pattern *channels;
    size_t channel_count;
    size_t prefix_count;                  /* key patterns with READ and PREFIX */
    const struct acl_pattern *only_prefix; /* the one when prefix_count == 1 */
};

/* A tenant: its keys or channels are restricted (anything short of read and write on every key,
 * and every channel). respguard confines tenants beyond Redis's own ACL. */
static inline bool acl_user_is_tenant(const struct acl_user *u)
{
    return !(u->flags & ACL_USER_RW_ALL) || !(u->flags & ACL_USER_ALLCHANNELS);
}

/* Do a and b grant exactly the same (commands after the guard, first arguments, keys, channels)?
 * Passwords and on/off are not compared. */
bool acl_user_same_rules(const struct acl_user *a, const struct acl_user *b);

/* Compile rules for user name. never/never_count: the guard list (lower-case names "cmd" or
 * "cmd|sub"; names the command table does not know are ignored: the config loader validates
 * them). On any error *out must still be released with acl_user_deinit. On a rule error
 * returns -EINVAL and writes Redis's wording ("Error in ACL SETUSER modifier '<token>':
 * <reason>", passwords shown as '>***') into err and the byte offset of the bad token in the
 * rules string into *err_offset. -ENOMEM when out of memory. */
int acl_user_compile(const char *name, const char *rules, const char *const *never, size_t never_count,
                     struct acl_user *out, char *err, size_t errlen, size_t *err_offset)
    __attribute__((warn_unused_result));
void acl_user_deinit(struct acl_user *u);

/* Would AUTH name password succeed for this user? Enabled, and nopass or one hash matches;
 * every stored hash is compared so the time does not tell which matched. */
bool acl_user_check_password(const struct acl_user *u, const char *password, size_t len);

/* Does the user name this command explicitly (+cmd or +cmd|sub, not taken back since)? cmd and
 * sub in any case; sub may be NULL. False for commands the table does not know. */
bool acl_user_names_command(const struct acl_user *u, const char *cmd, const char *sub);

/* Is name ("flushall", "client|kill", any case) a command or subcommand the table knows, in
 * the form a rule or the guard list names it? For validating guard.never_by_category. */
bool acl_command_known(const char *name, size_t len);

/* "#<64 hex>" for a secret, into out (at least 66 bytes). */
void acl_hash_password(const char *secret, size_t len, char out[66]);

/* ---------------------------------------------------------------------------------------- */
/* The verdict                                                                              */
/* ---------------------------------------------------------------------------------------- */

enum acl_result {
    ACL_OK = 0,                 /* run the command as sent */
    ACL_OK_APPEND_MATCH,        /* run it with two arguments appended: "MATCH" and
                                   v->match (the user's only prefix pattern, "<prefix>*") */
    ACL_OK_SCOPED,              /* run respguard's scoped form of it instead (v->scope) */
    ACL_ERR_UNKNOWN_COMMAND,    /* ERR unknown command '<name>', with args beginning with: ... */
    ACL_ERR_UNKNOWN_SUBCOMMAND, /* ERR unknown subcommand '<sub>'. Try <CMD> HELP. */
    ACL_ERR_ARITY,              /* ERR wrong number of arguments for '<fullname>' command */
    ACL_DENIED_COMMAND,         /* NOPERM this user has no permissions to run the '<fullname>'
                                   command */
    ACL_DENIED_KEY,             /* NOPERM this user has no permissions to access one of the keys
                                   used as arguments */
    ACL_DENIED_CHANNEL,         /* NOPERM this user has no permissions to access one of the
                                   channels used as arguments */
    ACL_DENIED_SORT_BY,         /* ERR BY option of SORT denied due to insufficient ACL permissions. */
    ACL_DENIED_SORT_GET,        /* ERR GET option of SORT denied due to insufficient ACL permissions. */
};

/* Why: Redis's own rule, or one of respguard's documented differences (for the audit log; the
 * names from acl_reason_name are stable). */
enum acl_reason {
    ACL_REASON_NONE = 0,      /* allowed as Redis would, or a syntax error (unknown, arity) */
    ACL_REASON_REDIS,         /* Redis 7.0's ACL refuses the same, with the same text */
    ACL_REASON_SORT,          /* Redis refuses the same, with the same text, but when SORT runs
                                 (ACL DRYRUN says OK) */
    ACL_REASON_GUARD,         /* a guard.never_by_category command granted only by category */
    ACL_REASON_SCRIPT,        /* EVAL*, FCALL*: a script reaches any key and channel */
    ACL_REASON_SCRIPT_ADMIN,  /* FUNCTION and SCRIPT subcommands (but HELP) */
    ACL_REASON_MIGRATE,       /* MIGRATE: keys leave for another server */
    ACL_REASON_ENUMERATION,   /* KEYS/SCAN outside the prefix,
                                 PUBSUB CHANNELS/SHARDCHANNELS */
    ACL_REASON_DATABASE,      /* SELECT n (n != 0), MOVE, COPY ... DB n (n != 0), SWAPDB */
    ACL_REASON_CLIENT,        /* CLIENT LIST/KILL/PAUSE/UNPAUSE/UNBLOCK, CLIENT TRACKING with
                                 BCAST or REDIRECT: other connections */
    ACL_REASON_MONITOR,       /* MONITOR, but for a user who names it and has every key and
                                 channel */
    ACL_REASON_SYSTEM_CHANNEL, /* __keyspace@*, __keyevent@*, __redis__* channels, or a pattern
                                  that could match them */
    ACL_REASON_KEY_EXTRACTION, /* the keys cannot be found (bad key count...): Redis would find
                                  none and check none */
    ACL_REASON_TOO_MANY,      /* more keys or channels than the scratch space (acl_check_ex) */
    ACL_REASON_SERVER,        /* a server-wide command (cmdtab_server_wide) that a tenant's rules
                                 grant only by category */
};

/* The scoped forms respguard serves in place of a command (ACL_OK_SCOPED). */
enum acl_scope {
    ACL_SCOPE_NONE = 0,
    ACL_SCOPE_INFO,   /* INFO: only the sections and fields that say nothing of other tenants */
    ACL_SCOPE_WHOAMI, /* ACL WHOAMI: the respguard user, not respguard's upstream login */
};
const char *acl_reason_name(enum acl_reason r);

struct acl_verdict {
    enum acl_result result;
    enum acl_reason reason;
    const struct cmdtab_cmd *cmd; /* the entry that runs: a container's subcommand resolved;
                                     NULL for an unknown command or subcommand */
    size_t pos;                   /* argv index of the refused key, channel or option; 0 when
                                     the command itself is refused */
    const char *match;            /* ACL_OK_APPEND_MATCH: the pattern to append after "MATCH"
                                     (points into the user; valid while the user lives) */
    size_t match_len;
    enum acl_scope scope;         /* ACL_OK_SCOPED: which form */
};

/* The longest error line acl_verdict_error can produce, plus its NUL. */
#define ACL_ERROR_MAX 512

/* Keys and channels acl_check can hold on its stack; commands with more need acl_check_ex. */
#define ACL_CHECK_STACK_ITEMS 256

/* Judge argv (argv[0] is the command name, any case) for user u. Returns 0 when the command
 * may run (out->result ACL_OK, ACL_OK_APPEND_MATCH or ACL_OK_SCOPED) and -EPERM when it must be answered with
 * acl_verdict_error and not sent upstream. Allocation-free. A command with more than
 * ACL_CHECK_STACK_ITEMS keys or channels, for a user whose keys or channels are restricted, is
 * refused with ACL_REASON_TOO_MANY: use acl_check_ex with room for argc items to be exact. */
int acl_check(const struct acl_user *u, size_t argc, const struct resp_arg *argv, struct acl_verdict *out);

/* acl_check with caller-provided scratch (cap entries each; cap >= argc always suffices,
 * since every key and channel is a distinct argument). */
int acl_check_ex(const struct acl_user *u, size_t argc, const struct resp_arg *argv, struct acl_verdict *out,
                 struct cmdtab_key *keys, struct cmdtab_channel *channels, size_t cap);

/* acl_check_ex for a command the caller has looked up already: top = cmdtab_lookup(argv[0]) (NULL:
 * unknown), sub = cmdtab_lookup_sub(top, argv[1]) when top has subcommands and argc >= 2 (NULL:
 * unknown subcommand; ignored otherwise). The same verdict as acl_check_ex, one look-up fewer. */
int acl_check_found(const struct acl_user *u, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub,
                    size_t argc, const struct resp_arg *argv, struct acl_verdict *out, struct cmdtab_key *keys,
                    struct cmdtab_channel *channels, size_t cap);

/* Scratch for acl_check_scratch: grown to the largest command seen, never per command. */
struct acl_scratch {
    struct cmdtab_key *keys;
    struct cmdtab_channel *channels;
    size_t cap;
    struct resp_arg *args;  /* acl_append_match's */
    size_t args_cap;
};

/* acl_check_found with the keys and channels on the stack, or for commands with more than
 * ACL_CHECK_STACK_ITEMS arguments in s (grown to argc). -ENOMEM when s cannot grow: then v is
 * a refusal (ACL_DENIED_KEY, ACL_REASON_TOO_MANY). */
int acl_check_scratch(const struct acl_user *u, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub,
                      size_t argc, const struct resp_arg *argv, struct acl_verdict *v, struct acl_scratch *s);
/* ACL_OK_APPEND_MATCH: argv with "MATCH" and v->match appended (argc + 2 arguments, in s; they
 * point into argv and the user). NULL when s cannot grow. */
const struct resp_arg *acl_append_match(struct acl_scratch *s, size_t argc, const struct resp_arg *argv,
                                        const struct acl_verdict *v);
void acl_scratch_free(struct acl_scratch *s);

/* The error line for a refused verdict, without '-' and CRLF, exactly as Redis 7.0 words it
 * (for an unknown command: the name and the first arguments cut at 128 bytes and at a NUL byte,
 * CR and LF replaced by spaces; a refused EXEC as "EXECABORT Transaction discarded because of:
 * <error without ERR>", as Redis answers it in or out of MULTI; the session must then also
 * discard its upstream transaction). argc/argv must be those given to acl_check. Writes at most
 * cap - 1 bytes and a NUL (cap >= ACL_ERROR_MAX never truncates) and returns the length of the
 * whole line; 0 for an allowed verdict. */
size_t acl_verdict_error(const struct acl_verdict *v, size_t argc, const struct resp_arg *argv, char *buf,
                         size_t cap);

#endif
