/* Unit tests for acl and glob: every rule token and every rule error, the verdict in Redis 7.0's
 * order with its exact texts, key positions and permissions, channels, the guard, respguard's
 * documented differences, and glob matching corner cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/acl.h"
#include "respguard/glob.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static const char *const guard_list[] = {"flushall", "flushdb", "config", "debug", "monitor", "client|kill",
                                         "client|list", "script|flush", "swapdb"};
#define GUARD_N (sizeof guard_list / sizeof guard_list[0])

static struct acl_user compile_guarded(const char *rules, const char *const *never, size_t n)
{
    struct acl_user u;
    char err[256] = "";
    size_t off = 0;
    int rc = acl_user_compile("u", rules, never, n, &u, err, sizeof err, &off);
    if (rc != 0)
        fail_msg("compile of '%s' failed: %s", rules, err);
    return u;
}

static struct acl_user compile_ok(const char *rules)
{
    return compile_guarded(rules, NULL, 0);
}

/* Compile must fail with exactly this message and offset. */
static void compile_err(const char *rules, const char *msg, size_t offset)
{
    struct acl_user u;
    char err[512] = "";
    size_t off = 12345;
    int rc = acl_user_compile("u", rules, NULL, 0, &u, err, sizeof err, &off);
    if (rc != -EINVAL)
        fail_msg("'%s' compiled (rc %d), expected: %s", rules, rc, msg);
    if (strcmp(err, msg) != 0)
        fail_msg("'%s': got '%s', expected '%s'", rules, err, msg);
    assert_int_equal(off, offset);
    acl_user_deinit(&u);
}

#define MAXARGS 400

/* Judge a command given as a NULL-terminated list of C strings; returns the error line ("OK"
 * or "REWRITE <pattern>" when allowed) in a static buffer and the verdict in *v. */
static const char *judge_v(const struct acl_user *u, struct acl_verdict *v, const char *const *args)
{
    static char out[ACL_ERROR_MAX + 16];
    struct resp_arg av[MAXARGS];
    size_t n = 0;
    while (args[n]) {
        av[n] = (struct resp_arg){args[n], strlen(args[n])};
        n++;
    }
    int rc = acl_check(u, n, av, v);
    if (rc == 0) {
        assert_true(v->result == ACL_OK || v->result == ACL_OK_APPEND_MATCH || v->result == ACL_OK_SCOPED);
        assert_int_equal(acl_verdict_error(v, n, av, out, sizeof out), 0);
        if (v->result == ACL_OK)
            return "OK";
        if (v->result == ACL_OK_SCOPED)
            return v->scope == ACL_SCOPE_INFO ? "SCOPED info" : "SCOPED whoami";
        snprintf(out, sizeof out, "REWRITE %.*s", (int)v->match_len, v->match);
        return out;
    }
    assert_int_equal(rc, -EPERM);
    size_t len = acl_verdict_error(v, n, av, out, sizeof out);
    assert_int_equal(len, strlen(out));
    return out;
}

#define JUDGE(u, ...) judge_v((u), &(struct acl_verdict){0}, (const char *const[]){__VA_ARGS__, NULL})

static const char *judge_r(const struct acl_user *u, enum acl_reason *why, size_t *pos, const char *const *args)
{
    struct acl_verdict v;
    const char *r = judge_v(u, &v, args);
    *why = v.reason;
    *pos = v.pos;
    return r;
}

#define NOPERM_RUN(c) "NOPERM this user has no permissions to run the '" c "' command"
#define NOPERM_KEYS "NOPERM this user has no permissions to access one of the keys used as arguments"
#define NOPERM_CHANNELS "NOPERM this user has no permissions to access one of the channels used as arguments"

/* Expect text, reason and position. */
static void expect(const struct acl_user *u, const char *want, enum acl_reason why, size_t pos,
                   const char *const *args)
{
    enum acl_reason r;
    size_t p;
    const char *got = judge_r(u, &r, &p, args);
    if (strcmp(got, want) != 0 || r != why || p != pos)
        fail_msg("%s ...: got '%s' (%s, %zu), want '%s' (%s, %zu)", args[0], got, acl_reason_name(r), p, want,
                 acl_reason_name(why), pos);
}

#define EXPECT(u, want, why, pos, ...) expect((u), (want), (why), (pos), (const char *const[]){__VA_ARGS__, NULL})

/* ---------------------------------------------------------------------------------------- */
/* rules: login part                                                                        */
/* ---------------------------------------------------------------------------------------- */

static void test_password_forms(void **state)
{
    (void)state;
    char hash[66];
    acl_hash_password("hashed", 6, hash);
    assert_int_equal(hash[0], '#');
    assert_int_equal(strlen(hash), 65);
    /* sha256("hashed") computed independently */
    assert_string_equal(hash, "#1a06df824ed741b53c785079a6347f00eec5af82f9850775409ca69dff4068a6");

    char rules[160];
    snprintf(rules, sizeof rules, "on >plain %s +@all", hash);
    struct acl_user u = compile_ok(rules);
    assert_true(u.enabled);
    assert_false(u.nopass);
    assert_int_equal(u.hash_count, 2);
    assert_true(acl_user_check_password(&u, "plain", 5));
    assert_true(acl_user_check_password(&u, "hashed", 6));
    assert_false(acl_user_check_password(&u, "plai", 4));
    assert_false(acl_user_check_password(&u, "", 0));
    acl_user_deinit(&u);

    /* the same password twice is stored once; !hash removes a hashed password */
    snprintf(rules, sizeof rules, "on >hashed %s !%s", hash, hash + 1);
    u = compile_ok(rules);
    assert_int_equal(u.hash_count, 0);
    assert_false(acl_user_check_password(&u, "hashed", 6));
    acl_user_deinit(&u);

    /* the empty password is a password */
    u = compile_ok("on >");
    assert_true(acl_user_check_password(&u, "", 0));
    assert_false(acl_user_check_password(&u, "x", 1));
    acl_user_deinit(&u);
}

static void test_on_off_nopass(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("off >x");
    assert_false(acl_user_check_password(&u, "x", 1)); /* disabled users never log in */
    acl_user_deinit(&u);

    u = compile_ok("ON nopass");
    assert_true(u.enabled);
    assert_true(acl_user_check_password(&u, "anything", 8));
    acl_user_deinit(&u);

    u = compile_ok("on nopass >p"); /* a password after nopass ends nopass, as in Redis */
    assert_false(u.nopass);
    assert_false(acl_user_check_password(&u, "other", 5));
    assert_true(acl_user_check_password(&u, "p", 1));
    acl_user_deinit(&u);

    u = compile_ok("on >p nopass"); /* nopass forgets the passwords */
    assert_true(u.nopass);
    assert_int_equal(u.hash_count, 0);
    acl_user_deinit(&u);

    u = compile_ok("on >a >b <a");
    assert_false(acl_user_check_password(&u, "a", 1));
    assert_true(acl_user_check_password(&u, "b", 1));
    acl_user_deinit(&u);

    u = compile_ok("on >a resetpass");
    assert_false(acl_user_check_password(&u, "a", 1));
    assert_false(u.nopass);
    acl_user_deinit(&u);

    u = compile_ok("on nopass RESETPASS");
    assert_false(acl_user_check_password(&u, "a", 1));
    acl_user_deinit(&u);

    u = compile_ok("on >a +flushdb ~* &* reset");
    assert_false(u.enabled);
    assert_int_equal(u.hash_count, 0);
    assert_int_equal(u.key_count, 0);
    assert_int_equal(u.flags, 0);
    assert_false(acl_user_names_command(&u, "flushdb", NULL));
    acl_user_deinit(&u);

    u = compile_ok("");
    assert_false(u.enabled); /* users start with nothing, as in Redis */
    assert_int_equal(u.flags, 0);
    assert_string_equal(JUDGE(&u, "PING"), NOPERM_RUN("ping"));
    acl_user_deinit(&u);

    u = compile_ok("  on\t nopass  clearselectors \n");
    assert_true(u.enabled);
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* rules: errors                                                                            */
/* ---------------------------------------------------------------------------------------- */

#define ERR_PREFIX "Error in ACL SETUSER modifier "
#define E_ENOENT "Unknown command or category name in ACL"
#define E_EINVAL "Syntax error"
#define E_EEXIST                                                                                               \
    "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. " \
    "Try 'resetkeys' to start with an empty list of patterns"
#define E_EISDIR                                                                                                  \
    "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any effect. " \
    "Try 'resetchannels' to start with an empty list of channels"
#define E_ENODEV "The password you are trying to remove from the user does not exist"
#define E_EBADMSG "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters"
#define E_ECHILD "Allowing first-arg of a subcommand is not supported"

static void test_rule_errors(void **state)
{
    (void)state;
    compile_err("on #abc", ERR_PREFIX "'#abc': " E_EBADMSG, 3);
    compile_err("#0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF",
                ERR_PREFIX "'#0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF': " E_EBADMSG, 0);
    compile_err("!0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                ERR_PREFIX "'!0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef': " E_ENODEV, 0);
    compile_err("!xyz", ERR_PREFIX "'!xyz': " E_EBADMSG, 0);
    compile_err("on <secretpw", ERR_PREFIX "'<***': " E_ENODEV, 3); /* never echo a password */
    compile_err("on nopass <x", ERR_PREFIX "'<***': " E_ENODEV, 10);
    compile_err("+|x", ERR_PREFIX "'+|x': " E_ENOENT, 0);
    compile_err("+config|", ERR_PREFIX "'+config|': " E_EINVAL, 0);
    compile_err("+get|", ERR_PREFIX "'+get|': " E_EINVAL, 0);
    compile_err("+config|get|x", ERR_PREFIX "'+config|get|x': " E_ECHILD, 0);
    compile_err("+config|get|", ERR_PREFIX "'+config|get|': " E_ECHILD, 0);
    compile_err("+get|x|y", ERR_PREFIX "'+get|x|y': " E_ENOENT, 0);
    compile_err("-select|0", ERR_PREFIX "'-select|0': " E_ENOENT, 0);
    compile_err("-config|", ERR_PREFIX "'-config|': " E_ENOENT, 0);
    compile_err("+config|nosuch", ERR_PREFIX "'+config|nosuch': " E_ENOENT, 0);
    compile_err("+nosuch", ERR_PREFIX "'+nosuch': " E_ENOENT, 0);
    compile_err("-nosuch", ERR_PREFIX "'-nosuch': " E_ENOENT, 0);
    compile_err("+", ERR_PREFIX "'+': " E_ENOENT, 0);
    compile_err("-", ERR_PREFIX "'-': " E_ENOENT, 0);
    compile_err("+@", ERR_PREFIX "'+@': " E_ENOENT, 0);
    compile_err("+@foo", ERR_PREFIX "'+@foo': " E_ENOENT, 0);
    compile_err("on -@foo", ERR_PREFIX "'-@foo': " E_ENOENT, 3);
    compile_err("foo", ERR_PREFIX "'foo': " E_EINVAL, 0);
    compile_err("on offf", ERR_PREFIX "'offf': " E_EINVAL, 3);
    compile_err("%", ERR_PREFIX "'%': " E_EINVAL, 0);
    compile_err("%~x", ERR_PREFIX "'%~x': " E_EINVAL, 0);
    compile_err("%X~a", ERR_PREFIX "'%X~a': " E_EINVAL, 0);
    compile_err("%RR~x", ERR_PREFIX "'%RR~x': " E_EINVAL, 0);
    compile_err("%Rx~y", ERR_PREFIX "'%Rx~y': " E_EINVAL, 0);
    compile_err("~* ~x", ERR_PREFIX "'~x': " E_EEXIST, 3);
    compile_err("allkeys %R~x", ERR_PREFIX "'%R~x': " E_EEXIST, 8);
    compile_err("&* &x", ERR_PREFIX "'&x': " E_EISDIR, 3);
    compile_err("allchannels &x", ERR_PREFIX "'&x': " E_EISDIR, 12);
    compile_err("on (~x +get)",
                ERR_PREFIX "'(~x': Selectors are not supported by respguard; use one set of rules per user", 3);
    compile_err("sanitize-payload",
                ERR_PREFIX "'sanitize-payload': Payload sanitization rules are not supported by respguard", 0);
    compile_err("skip-sanitize-payload",
                ERR_PREFIX "'skip-sanitize-payload': Payload sanitization rules are not supported by respguard", 0);

    /* long tokens are cut in the message */
    char rules[300];
    memset(rules, 'x', 200);
    rules[200] = '\0';
    struct acl_user u;
    char err[512];
    size_t off;
    assert_int_equal(acl_user_compile("u", rules, NULL, 0, &u, err, sizeof err, &off), -EINVAL);
    assert_true(strlen(err) < 200);
    acl_user_deinit(&u);

    /* a NULL err buffer is allowed */
    assert_int_equal(acl_user_compile("u", "foo", NULL, 0, &u, NULL, 0, NULL), -EINVAL);
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* rules: keys, channels, commands                                                          */
/* ---------------------------------------------------------------------------------------- */

static void test_key_rules(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("~a:* %R~b:* %W~c:* %RW~d:* %rw~e %R~x %W~x %R %w~ ~a:*");
    assert_int_equal(u.key_count, 7); /* a:* b:* c:* d:* e x "" */
    assert_string_equal(u.keys[0].ptr, "a:*");
    assert_int_equal(u.keys[0].flags, ACL_PATTERN_READ | ACL_PATTERN_WRITE | ACL_PATTERN_PREFIX);
    assert_int_equal(u.keys[1].flags, ACL_PATTERN_READ | ACL_PATTERN_PREFIX);
    assert_int_equal(u.keys[2].flags, ACL_PATTERN_WRITE | ACL_PATTERN_PREFIX);
    assert_int_equal(u.keys[3].flags, ACL_PATTERN_READ | ACL_PATTERN_WRITE | ACL_PATTERN_PREFIX);
    assert_string_equal(u.keys[4].ptr, "e");
    assert_int_equal(u.keys[4].flags, ACL_PATTERN_READ | ACL_PATTERN_WRITE);
    assert_string_equal(u.keys[5].ptr, "x"); /* %R~x and %W~x merge */
    assert_int_equal(u.keys[5].flags, ACL_PATTERN_READ | ACL_PATTERN_WRITE);
    assert_int_equal(u.keys[6].len, 0); /* "%R" is the empty pattern, read; "%w~" adds write */
    assert_int_equal(u.keys[6].flags, ACL_PATTERN_READ | ACL_PATTERN_WRITE);
    assert_int_equal(u.prefix_count, 3); /* a:* b:* d:* are readable prefixes */
    assert_null(u.only_prefix);
    assert_int_equal(u.flags, 0);
    acl_user_deinit(&u);

    u = compile_ok("~tenant:* ~x?y ~k[ab]* ~\\*x*");
    assert_int_equal(u.prefix_count, 1);
    assert_string_equal(u.only_prefix->ptr, "tenant:*");
    acl_user_deinit(&u);

    u = compile_ok("allkeys");
    assert_int_equal(u.flags, ACL_USER_ALLKEYS | ACL_USER_READ_ALL | ACL_USER_RW_ALL);
    acl_user_deinit(&u);
    u = compile_ok("~a ~*");
    assert_int_equal(u.flags, ACL_USER_ALLKEYS | ACL_USER_READ_ALL | ACL_USER_RW_ALL);
    assert_int_equal(u.key_count, 0);
    acl_user_deinit(&u);
    u = compile_ok("%RW~* ~foo"); /* a pattern "*", not allkeys: more patterns may follow */
    assert_int_equal(u.flags, ACL_USER_READ_ALL | ACL_USER_RW_ALL);
    assert_int_equal(u.key_count, 2);
    acl_user_deinit(&u);
    u = compile_ok("%R~* %W~a:*");
    assert_int_equal(u.flags, ACL_USER_READ_ALL);
    acl_user_deinit(&u);
    u = compile_ok("%W~* ~x:*");
    assert_int_equal(u.flags, 0);
    acl_user_deinit(&u);
    u = compile_ok("allkeys resetkeys ~b");
    assert_int_equal(u.flags, 0);
    assert_int_equal(u.key_count, 1);
    acl_user_deinit(&u);
    u = compile_ok("ALLKEYS RESETKEYS");
    assert_int_equal(u.flags, 0);
    assert_int_equal(u.key_count, 0);
    acl_user_deinit(&u);
}

static void test_channel_rules(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("&a &b* &a");
    assert_int_equal(u.channel_count, 2);
    assert_int_equal(u.flags, 0);
    acl_user_deinit(&u);
    u = compile_ok("&a allchannels");
    assert_int_equal(u.flags, ACL_USER_ALLCHANNELS);
    assert_int_equal(u.channel_count, 0);
    acl_user_deinit(&u);
    u = compile_ok("&* resetchannels &x");
    assert_int_equal(u.flags, 0);
    assert_int_equal(u.channel_count, 1);
    acl_user_deinit(&u);
    u = compile_ok("&");
    assert_int_equal(u.channel_count, 1);
    assert_int_equal(u.channels[0].len, 0);
    acl_user_deinit(&u);
}

static void test_command_rules(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on ~* +get +CONFIG|GET -@all +set");
    assert_string_equal(JUDGE(&u, "get", "k"), NOPERM_RUN("get")); /* -@all took it back */
    assert_string_equal(JUDGE(&u, "set", "k", "v"), "OK");
    acl_user_deinit(&u);

    u = compile_ok("~* +@read -get");
    assert_string_equal(JUDGE(&u, "MGET", "a", "b"), "OK");
    assert_string_equal(JUDGE(&u, "GET", "a"), NOPERM_RUN("get"));
    assert_string_equal(JUDGE(&u, "SET", "a", "b"), NOPERM_RUN("set"));
    acl_user_deinit(&u);

    u = compile_ok("~* +@ALL -@WRITE +Set");
    assert_string_equal(JUDGE(&u, "SET", "a", "b"), "OK");
    assert_string_equal(JUDGE(&u, "DEL", "a"), NOPERM_RUN("del"));
    assert_string_equal(JUDGE(&u, "get", "a"), "OK");
    acl_user_deinit(&u);

    u = compile_ok("~* &* allcommands -config|set");
    assert_string_equal(JUDGE(&u, "config", "get", "x"), "OK");
    assert_string_equal(JUDGE(&u, "config", "set", "x", "y"), NOPERM_RUN("config|set"));
    acl_user_deinit(&u);

    u = compile_ok("~* +config -config|set +config"); /* order matters, as in Redis */
    assert_string_equal(JUDGE(&u, "config", "set", "x", "y"), "OK");
    acl_user_deinit(&u);

    u = compile_ok("~* +client|id +xinfo nocommands +object|encoding");
    assert_string_equal(JUDGE(&u, "client", "id"), NOPERM_RUN("client|id"));
    assert_string_equal(JUDGE(&u, "object", "encoding", "k"), "OK");
    assert_string_equal(JUDGE(&u, "object", "freq", "k"), NOPERM_RUN("object|freq"));
    acl_user_deinit(&u);

    /* A container's category is @slow: -@slow takes every subcommand (Redis does the same). */
    u = compile_ok("~* +@all -@slow");
    assert_string_equal(JUDGE(&u, "client", "id"), NOPERM_RUN("client|id"));
    assert_string_equal(JUDGE(&u, "get", "k"), "OK");
    acl_user_deinit(&u);

    /* first-argument rules (deprecated in Redis, still accepted) */
    u = compile_ok("~* +select|0 +select|1 +get");
    assert_string_equal(JUDGE(&u, "select", "0"), "OK");
    assert_string_equal(JUDGE(&u, "SELECT", "1"), "OK");
    assert_string_equal(JUDGE(&u, "select", "2"), NOPERM_RUN("select"));
    acl_user_deinit(&u);
    u = compile_ok("~* +debug|object +debug|SLEEP");
    assert_string_equal(JUDGE(&u, "debug", "OBJECT", "k"), "OK");
    assert_string_equal(JUDGE(&u, "debug", "sleep", "0"), "OK");
    assert_string_equal(JUDGE(&u, "debug", "reload"), NOPERM_RUN("debug"));
    acl_user_deinit(&u);
    u = compile_ok("~* +debug|object -debug"); /* -debug also drops its first arguments */
    assert_string_equal(JUDGE(&u, "debug", "object", "k"), NOPERM_RUN("debug"));
    acl_user_deinit(&u);
    u = compile_ok("~* +debug|object +@all -@all");
    assert_string_equal(JUDGE(&u, "debug", "object", "k"), NOPERM_RUN("debug"));
    acl_user_deinit(&u);
    /* Redis compares first arguments with strcasecmp: an argument ends at a NUL byte */
    u = compile_ok("~* +select|0");
    struct resp_arg av[2] = {{"select", 6}, {"0\0x", 3}};
    struct acl_verdict v;
    assert_int_equal(acl_check(&u, 2, av, &v), 0);
    acl_user_deinit(&u);

    /* AUTH and HELLO run for anyone (no_auth) */
    u = compile_ok("on nopass -@all");
    assert_string_equal(JUDGE(&u, "AUTH", "x"), "OK");
    assert_string_equal(JUDGE(&u, "hello", "3"), "OK");
    acl_user_deinit(&u);
}

static void test_named_commands(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass ~* +@all +FLUSHDB +client|kill -config|set +config");
    assert_true(acl_user_names_command(&u, "flushdb", NULL));
    assert_false(acl_user_names_command(&u, "flushall", NULL)); /* +@all never names a command */
    assert_true(acl_user_names_command(&u, "client", "kill"));
    assert_false(acl_user_names_command(&u, "client", "list"));
    assert_true(acl_user_names_command(&u, "config", "get"));
    assert_true(acl_user_names_command(&u, "config", "set")); /* +config came last, as in Redis */
    assert_false(acl_user_names_command(&u, "nosuch", NULL));
    acl_user_deinit(&u);

    u = compile_ok("on nopass +config -config|set");
    assert_true(acl_user_names_command(&u, "config", "get"));
    assert_false(acl_user_names_command(&u, "config", "set"));
    acl_user_deinit(&u);

    u = compile_ok("on nopass +flushdb -flushdb");
    assert_false(acl_user_names_command(&u, "flushdb", NULL));
    acl_user_deinit(&u);

    u = compile_ok("on nopass +client|kill -client");
    assert_false(acl_user_names_command(&u, "client", "kill"));
    acl_user_deinit(&u);

    u = compile_ok("on nopass +flushdb nocommands");
    assert_false(acl_user_names_command(&u, "flushdb", NULL));
    acl_user_deinit(&u);

    u = compile_ok("on nopass +flushdb -@dangerous");
    assert_false(acl_user_names_command(&u, "flushdb", NULL));
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* the guard                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void test_guard(void **state)
{
    (void)state;
    struct acl_user u = compile_guarded("on nopass ~* &* +@all", guard_list, GUARD_N);
    EXPECT(&u, NOPERM_RUN("flushall"), ACL_REASON_GUARD, 0, "FLUSHALL");
    EXPECT(&u, NOPERM_RUN("config|get"), ACL_REASON_GUARD, 0, "config", "get", "x");
    EXPECT(&u, NOPERM_RUN("client|kill"), ACL_REASON_GUARD, 0, "client", "kill", "1.2.3.4:5");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "client", "id");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "script", "load", "return 1");
    EXPECT(&u, NOPERM_RUN("script|flush"), ACL_REASON_GUARD, 0, "script", "flush");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "get", "k");
    acl_user_deinit(&u);

    u = compile_guarded("on nopass ~* &* +@all +flushall +config|get +client", guard_list, GUARD_N);
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "flushall");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "config", "get", "x");
    EXPECT(&u, NOPERM_RUN("config|set"), ACL_REASON_GUARD, 0, "config", "set", "x", "y");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "client", "kill", "1.2.3.4:5");
    EXPECT(&u, NOPERM_RUN("flushdb"), ACL_REASON_GUARD, 0, "flushdb");
    acl_user_deinit(&u);

    /* named before the category: still named */
    u = compile_guarded("on nopass ~* +flushdb +@all", guard_list, GUARD_N);
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "flushdb");
    acl_user_deinit(&u);

    /* taken back by a category, a name, or nocommands */
    u = compile_guarded("on nopass ~* +flushdb +@all -@dangerous +@all", guard_list, GUARD_N);
    EXPECT(&u, NOPERM_RUN("flushdb"), ACL_REASON_GUARD, 0, "flushdb");
    acl_user_deinit(&u);
    u = compile_guarded("on nopass ~* +@all +flushdb -@dangerous", guard_list, GUARD_N);
    EXPECT(&u, NOPERM_RUN("flushdb"), ACL_REASON_REDIS, 0, "flushdb");
    acl_user_deinit(&u);
    u = compile_guarded("on nopass ~* +config -config|set", guard_list, GUARD_N);
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "config", "get", "x");
    EXPECT(&u, NOPERM_RUN("config|set"), ACL_REASON_REDIS, 0, "config", "set", "x", "y");
    acl_user_deinit(&u);

    /* a category that names nothing guarded still works */
    u = compile_guarded("on nopass ~* +@read", guard_list, GUARD_N);
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "get", "k");
    acl_user_deinit(&u);

    assert_true(acl_command_known("client|kill", 11));
    assert_true(acl_command_known("CONFIG", 6));
    assert_false(acl_command_known("config|nosuch", 13));
    assert_false(acl_command_known("get|x", 5));
    assert_false(acl_command_known("", 0));

    /* unknown guard names are ignored */
    const char *odd[] = {"nosuch", "config|nosuch", "get|x|y", NULL, "get"};
    u = compile_guarded("on nopass ~* &* +@all", odd, 5);
    EXPECT(&u, NOPERM_RUN("get"), ACL_REASON_GUARD, 0, "get", "k");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "config", "get", "x");
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* the verdict: syntax errors                                                               */
/* ---------------------------------------------------------------------------------------- */

static void test_unknown_command_text(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass ~* &* +@all");
    assert_string_equal(JUDGE(&u, "foo"), "ERR unknown command 'foo', with args beginning with: ");
    assert_string_equal(JUDGE(&u, "foo", "a"), "ERR unknown command 'foo', with args beginning with: 'a' ");
    assert_string_equal(JUDGE(&u, "foo", "a", "b\r\nc"),
                        "ERR unknown command 'foo', with args beginning with: 'a' 'b  c' ");
    assert_string_equal(JUDGE(&u, "fo\r\no", "a"), "ERR unknown command 'fo  o', with args beginning with: 'a' ");
    assert_string_equal(JUDGE(&u, "foo", "", "b"), "ERR unknown command 'foo', with args beginning with: '' 'b' ");

    /* 128-byte cuts: the name; each argument to what is left of 128; stop at 128 */
    char a200[201], b100[101], f200[201], want[600];
    memset(a200, 'a', 200);
    a200[200] = '\0';
    memset(b100, 'b', 100);
    b100[100] = '\0';
    memset(f200, 'f', 200);
    f200[200] = '\0';
    snprintf(want, sizeof want, "ERR unknown command 'foo', with args beginning with: '%.128s' ", a200);
    assert_string_equal(JUDGE(&u, "foo", a200, "x"), want);
    a200[100] = '\0';
    snprintf(want, sizeof want, "ERR unknown command 'foo', with args beginning with: '%s' '%.25s' ", a200, b100);
    assert_string_equal(JUDGE(&u, "foo", a200, b100, "c"), want);
    a200[100] = 'a';
    a200[126] = '\0';
    snprintf(want, sizeof want, "ERR unknown command 'foo', with args beginning with: '%s' ", a200);
    assert_string_equal(JUDGE(&u, "foo", a200, "b"), want);
    a200[126] = 'a';
    snprintf(want, sizeof want, "ERR unknown command '%.128s', with args beginning with: 'x' ", f200);
    assert_string_equal(JUDGE(&u, f200, "x"), want);
    assert_string_equal(JUDGE(&u, "foo", "abcdefghi", "abcdefghi", "abcdefghi", "abcdefghi", "abcdefghi",
                              "abcdefghi", "abcdefghi", "abcdefghi", "abcdefghi", "abcdefghi", "abcdefghi", "z"),
                        "ERR unknown command 'foo', with args beginning with: 'abcdefghi' 'abcdefghi' 'abcdefghi' "
                        "'abcdefghi' 'abcdefghi' 'abcdefghi' 'abcdefghi' 'abcdefghi' 'abcdefghi' 'abcdefghi' "
                        "'abcdefgh' ");

    /* a NUL byte ends a name or an argument in the text (Redis prints them with %s) */
    struct resp_arg av[3] = {{"foo", 3}, {"a\0b", 3}, {"c", 1}};
    struct acl_verdict v;
    char buf[ACL_ERROR_MAX];
    assert_int_equal(acl_check(&u, 3, av, &v), -EPERM);
    assert_int_equal(v.result, ACL_ERR_UNKNOWN_COMMAND);
    acl_verdict_error(&v, 3, av, buf, sizeof buf);
    assert_string_equal(buf, "ERR unknown command 'foo', with args beginning with: 'a' 'c' ");
    struct resp_arg av2[2] = {{"get\0", 4}, {"k", 1}};
    assert_int_equal(acl_check(&u, 2, av2, &v), -EPERM);
    acl_verdict_error(&v, 2, av2, buf, sizeof buf);
    assert_string_equal(buf, "ERR unknown command 'get', with args beginning with: 'k' ");

    /* truncation to the buffer, with the full length returned */
    char small[10];
    size_t n = acl_verdict_error(&v, 2, av2, small, sizeof small);
    assert_int_equal(n, strlen("ERR unknown command 'get', with args beginning with: 'k' "));
    assert_string_equal(small, "ERR unkno");

    /* argc 0 */
    assert_int_equal(acl_check(&u, 0, NULL, &v), -EPERM);
    acl_verdict_error(&v, 0, NULL, buf, sizeof buf);
    assert_string_equal(buf, "ERR unknown command '', with args beginning with: ");
    acl_user_deinit(&u);
}

static void test_subcommand_and_arity_text(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass ~* &* +@all");
    assert_string_equal(JUDGE(&u, "config", "foo"), "ERR unknown subcommand 'foo'. Try CONFIG HELP.");
    assert_string_equal(JUDGE(&u, "Config", "fo\r\no"), "ERR unknown subcommand 'fo  o'. Try CONFIG HELP.");
    assert_string_equal(JUDGE(&u, "command", "foo"), "ERR unknown subcommand 'foo'. Try COMMAND HELP.");
    assert_string_equal(JUDGE(&u, "cOnFiG"), "ERR wrong number of arguments for 'config' command");
    assert_string_equal(JUDGE(&u, "CONFIG", "GET"), "ERR wrong number of arguments for 'config|get' command");
    assert_string_equal(JUDGE(&u, "get"), "ERR wrong number of arguments for 'get' command");
    assert_string_equal(JUDGE(&u, "get", "a", "b"), "ERR wrong number of arguments for 'get' command");
    assert_string_equal(JUDGE(&u, "object", "help", "x"), "ERR wrong number of arguments for 'object|help' command");
    assert_string_equal(JUDGE(&u, "command"), "OK"); /* a container that runs alone */
    assert_string_equal(JUDGE(&u, "exec", "x"),
                        "EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command");
    acl_user_deinit(&u);

    /* Syntax errors come before the ACL, as in Redis. */
    u = compile_ok("on nopass");
    assert_string_equal(JUDGE(&u, "get"), "ERR wrong number of arguments for 'get' command");
    assert_string_equal(JUDGE(&u, "get", "k"), NOPERM_RUN("get"));
    assert_string_equal(JUDGE(&u, "config", "get", "x"), NOPERM_RUN("config|get"));
    assert_string_equal(JUDGE(&u, "exec"),
                        "EXECABORT Transaction discarded because of: " NOPERM_RUN("exec"));
    acl_user_deinit(&u);

    char buf[300];
    char sub[200];
    memset(sub, 's', 199);
    sub[199] = '\0';
    u = compile_ok("on nopass ~* +@all");
    snprintf(buf, sizeof buf, "ERR unknown subcommand '%.128s'. Try XINFO HELP.", sub);
    assert_string_equal(JUDGE(&u, "xinfo", sub), buf);
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* the verdict: keys                                                                        */
/* ---------------------------------------------------------------------------------------- */

static void test_key_positions(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass ~a:* +@all");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "MSET", "a:1", "x", "a:2", "y");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 3, "MSET", "a:1", "x", "b:2", "y", "c", "z");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "MSET", "b:1", "a:x");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "RENAME", "a:1", "b:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "COPY", "a:1", "b:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "SMOVE", "a:1", "b:1", "m");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "LMOVE", "a:1", "b:1", "LEFT", "RIGHT");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 4, "BITOP", "AND", "a:d", "a:1", "b:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "BITOP", "OR", "b:d", "a:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "SUNIONSTORE", "b:d", "a:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 4, "ZUNIONSTORE", "a:d", "2", "a:1", "b:1", "WEIGHTS", "1", "2");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "ZUNIONSTORE", "a:d", "2", "a:1", "a:2", "WEIGHTS", "b:1", "b:2");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 5, "XREAD", "COUNT", "2", "STREAMS", "a:1", "b:1", "0", "0");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "XREAD", "STREAMS", "a:1", "a:2", "b:1", "b:2");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 9, "GEORADIUS", "a:g", "0", "0", "1", "km", "STORE", "a:s",
           "STOREDIST", "b:s");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "OBJECT", "ENCODING", "b:1");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "OBJECT", "ENCODING", "a:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "MEMORY", "USAGE", "b:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "XINFO", "STREAM", "b:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 2, "XGROUP", "CREATE", "b:1", "g", "$");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 3, "WATCH", "a:1", "a:2", "b:3");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 5, "SORT", "a:1", "STORE", "a:2", "STORE", "b:3");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 4, "BLMPOP", "0", "2", "a:1", "b:1", "LEFT");
    /* keywords are not keys */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SET", "a:1", "v", "GET");
    /* a key count that cannot be read: refused (Redis would find no key and check none) */
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_KEY_EXTRACTION, 0, "ZUNIONSTORE", "a:d", "-1", "a:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_KEY_EXTRACTION, 0, "ZUNIONSTORE", "a:d", "01", "a:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_KEY_EXTRACTION, 0, "EVAL", "x", "5", "a:1");
    /* key-less commands */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "PING");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "ECHO", "b:1");
    acl_user_deinit(&u);
}

static void test_key_permissions(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass %R~r:* %W~w:* ~rw:* +@all");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "GET", "r:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "GET", "w:1");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SET", "w:1", "v");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "SET", "r:1", "v");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "SET", "w:1", "v", "GET"); /* GET makes it read too */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SET", "rw:1", "v", "GET");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "APPEND", "w:1", "v");                /* RW|INSERT: write only */
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "INCR", "w:1");               /* ACCESS|UPDATE */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "INCR", "rw:1");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "EXISTS", "w:1", "r:1");             /* RO without access */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "COPY", "r:1", "w:2");               /* read src, write dst */
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "LMOVE", "r:1", "w:1", "LEFT", "LEFT"); /* src: RW */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "LMOVE", "rw:1", "w:1", "LEFT", "LEFT");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "DEL", "w:1");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "DEL", "r:1");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "BITFIELD_RO", "r:1", "GET", "u8", "0");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "BITFIELD", "r:1", "SET", "u8", "0", "1");
    acl_user_deinit(&u);

    /* "%RW~*" is a pattern, not allkeys: like Redis it does not match the empty key */
    u = compile_ok("on nopass %RW~* +@all");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "GET", "x");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "GET", "");
    acl_user_deinit(&u);
    u = compile_ok("on nopass allkeys +@all");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "GET", "");
    acl_user_deinit(&u);

    /* no key patterns at all */
    u = compile_ok("on nopass +@all");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "GET", "x");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "PING");
    acl_user_deinit(&u);

    /* patterns are byte-exact: no case folding */
    u = compile_ok("on nopass ~Key:* +@all");
    EXPECT(&u, NOPERM_KEYS, ACL_REASON_REDIS, 1, "GET", "key:1");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "GET", "Key:1");
    struct resp_arg av[2] = {{"GET", 3}, {"Key:\0\xff", 6}};
    struct acl_verdict v;
    assert_int_equal(acl_check(&u, 2, av, &v), 0);
    acl_user_deinit(&u);
}

static void test_too_many_keys(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass ~a:* +@all");
    enum { N = 1 + 2 * 300 };
    struct resp_arg *av = calloc(N, sizeof *av);
    assert_non_null(av);
    av[0] = (struct resp_arg){"MSET", 4};
    for (size_t i = 1; i < N; i++)
        av[i] = (struct resp_arg){"a:k", 3};
    struct acl_verdict v;
    assert_int_equal(acl_check(&u, N, av, &v), -EPERM);
    assert_int_equal(v.result, ACL_DENIED_KEY);
    assert_int_equal(v.reason, ACL_REASON_TOO_MANY);

    struct cmdtab_key *keys = calloc(N, sizeof *keys);
    struct cmdtab_channel *chans = calloc(N, sizeof *chans);
    assert_int_equal(acl_check_ex(&u, N, av, &v, keys, chans, N), 0);
    av[N - 2] = (struct resp_arg){"b:k", 3};
    assert_int_equal(acl_check_ex(&u, N, av, &v, keys, chans, N), -EPERM);
    assert_int_equal(v.pos, N - 2);

    /* allkeys users are never limited */
    struct acl_user all = compile_ok("on nopass ~* +@all");
    assert_int_equal(acl_check(&all, N, av, &v), 0);
    acl_user_deinit(&all);
    free(keys);
    free(chans);
    free(av);
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* the verdict: channels                                                                    */
/* ---------------------------------------------------------------------------------------- */

static void test_channels(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("on nopass ~* &news.* &chat +@all");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "PUBLISH", "news.a", "m");
    EXPECT(&u, NOPERM_CHANNELS, ACL_REASON_REDIS, 1, "PUBLISH", "sport", "m");
    EXPECT(&u, NOPERM_CHANNELS, ACL_REASON_REDIS, 3, "SUBSCRIBE", "chat", "news.x", "chatter");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SSUBSCRIBE", "chat");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SPUBLISH", "news.1", "m");
    EXPECT(&u, NOPERM_CHANNELS, ACL_REASON_REDIS, 1, "SPUBLISH", "other", "m");
    /* a pattern must equal one of the user's patterns */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "PSUBSCRIBE", "news.*");
    EXPECT(&u, NOPERM_CHANNELS, ACL_REASON_REDIS, 1, "PSUBSCRIBE", "news.a*");
    EXPECT(&u, NOPERM_CHANNELS, ACL_REASON_REDIS, 2, "PSUBSCRIBE", "chat", "*");
    /* ... compared with strcmp, as Redis does */
    struct resp_arg av[2] = {{"PSUBSCRIBE", 10}, {"chat\0x", 6}};
    struct acl_verdict v;
    assert_int_equal(acl_check(&u, 2, av, &v), 0);
    /* unsubscribing is never refused */
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "UNSUBSCRIBE", "sport");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "PUNSUBSCRIBE", "*");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SUBSCRIBE", "chat");
    acl_user_deinit(&u);

    u = compile_ok("on nopass ~* +@all");
    EXPECT(&u, NOPERM_CHANNELS, ACL_REASON_REDIS, 1, "PUBLISH", "x", "m");
    acl_user_deinit(&u);
    u = compile_ok("on nopass ~* &* +@all");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "PSUBSCRIBE", "*");
    EXPECT(&u, "OK", ACL_REASON_NONE, 0, "SUBSCRIBE", "__keyspace@0__:x");
    acl_user_deinit(&u);
}

/* ---------------------------------------------------------------------------------------- */
/* the verdict: documented differences                                                      */
/* ---------------------------------------------------------------------------------------- */

static void test_differences_scripts(void **state)
{
    (void)state;
    struct acl_user t = compile_ok("on nopass ~t:* &t:* +@all");
    EXPECT(&t, NOPERM_RUN("eval"), ACL_REASON_SCRIPT, 0, "EVAL", "return 1", "0");
    EXPECT(&t, NOPERM_RUN("evalsha"), ACL_REASON_SCRIPT, 0, "evalsha", "abc", "1", "t:1");
    EXPECT(&t, NOPERM_RUN("eval_ro"), ACL_REASON_SCRIPT, 0, "eval_ro", "x", "0");
    EXPECT(&t, NOPERM_RUN("evalsha_ro"), ACL_REASON_SCRIPT, 0, "evalsha_ro", "x", "0");
    EXPECT(&t, NOPERM_RUN("fcall"), ACL_REASON_SCRIPT, 0, "FCALL", "f", "0");
    EXPECT(&t, NOPERM_RUN("fcall_ro"), ACL_REASON_SCRIPT, 0, "FCALL_RO", "f", "0");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_REDIS, 3, "EVAL", "x", "1", "u:1"); /* Redis's key check first */
    EXPECT(&t, NOPERM_RUN("function|load"), ACL_REASON_SCRIPT_ADMIN, 0, "FUNCTION", "LOAD", "code");
    EXPECT(&t, NOPERM_RUN("function|list"), ACL_REASON_SCRIPT_ADMIN, 0, "FUNCTION", "LIST");
    EXPECT(&t, NOPERM_RUN("script|exists"), ACL_REASON_SCRIPT_ADMIN, 0, "SCRIPT", "EXISTS", "x");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SCRIPT", "HELP");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "FUNCTION", "HELP");
    acl_user_deinit(&t);

    /* keys free but channels restricted: scripts can still publish anywhere */
    t = compile_ok("on nopass ~* &t:* +@all");
    EXPECT(&t, NOPERM_RUN("eval"), ACL_REASON_SCRIPT, 0, "EVAL", "return 1", "0");
    acl_user_deinit(&t);

    /* named: the operator trusts this tenant's scripts (a job queue's); Redis's key check of
     * KEYS still applies, and what is not named stays refused */
    t = compile_ok("on nopass ~t:* &t:* +@all +eval +evalsha +script|load");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "EVAL", "return 1", "0");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "EVALSHA", "abc", "1", "t:1");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_REDIS, 3, "EVALSHA", "abc", "1", "u:1");
    EXPECT(&t, NOPERM_RUN("fcall"), ACL_REASON_SCRIPT, 0, "FCALL", "f", "0");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SCRIPT", "LOAD", "return 1");
    EXPECT(&t, NOPERM_RUN("script|flush"), ACL_REASON_SCRIPT_ADMIN, 0, "SCRIPT", "FLUSH");
    acl_user_deinit(&t);

    struct acl_user f = compile_ok("on nopass ~* &* +@all");
    EXPECT(&f, "OK", ACL_REASON_NONE, 0, "EVAL", "return 1", "0");
    EXPECT(&f, "OK", ACL_REASON_NONE, 0, "FUNCTION", "LIST");
    acl_user_deinit(&f);
    f = compile_ok("on nopass %RW~* &* +@all");
    EXPECT(&f, "OK", ACL_REASON_NONE, 0, "EVAL", "return 1", "0");
    acl_user_deinit(&f);
}

static void test_differences_sort_migrate(void **state)
{
    (void)state;
    struct acl_user t = compile_ok("on nopass ~t:* &* +@all");
    const char *by = "ERR BY option of SORT denied due to insufficient ACL permissions.";
    const char *get = "ERR GET option of SORT denied due to insufficient ACL permissions.";
    EXPECT(&t, by, ACL_REASON_SORT, 2, "SORT", "t:l", "BY", "w_*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SORT", "t:l", "BY", "nosort", "DESC", "ALPHA");
    EXPECT(&t, get, ACL_REASON_SORT, 2, "SORT", "t:l", "GET", "#");
    EXPECT(&t, get, ACL_REASON_SORT, 5, "SORT", "t:l", "LIMIT", "0", "1", "get", "x");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SORT", "t:l", "LIMIT", "x", "1", "GET", "x"); /* Redis fails first */
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SORT", "t:l", "FOO", "GET", "x");           /* syntax error first */
    EXPECT(&t, by, ACL_REASON_SORT, 4, "SORT", "t:l", "STORE", "t:d", "BY", "*");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_REDIS, 3, "SORT", "t:l", "STORE", "u:d", "BY", "*");
    EXPECT(&t, get, ACL_REASON_SORT, 2, "SORT_RO", "t:l", "GET", "#");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SORT_RO", "t:l", "STORE", "GET", "x"); /* syntax error in SORT_RO */
    struct resp_arg av[4] = {{"SORT", 4}, {"t:l", 3}, {"BY", 2}, {"x\0*", 3}};
    struct acl_verdict v;
    assert_int_equal(acl_check(&t, 4, av, &v), 0); /* Redis's strchr stops at the NUL */
    EXPECT(&t, NOPERM_RUN("migrate"), ACL_REASON_MIGRATE, 0, "MIGRATE", "h", "1", "t:1", "0", "10");
    acl_user_deinit(&t);

    t = compile_ok("on nopass %R~* ~t:* +@all");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SORT", "t:l", "BY", "w_*", "GET", "#", "STORE", "t:d");
    EXPECT(&t, NOPERM_RUN("migrate"), ACL_REASON_MIGRATE, 0, "MIGRATE", "h", "1", "t:1", "0", "10");
    acl_user_deinit(&t);
}

static void test_differences_enumeration(void **state)
{
    (void)state;
    struct acl_user t = compile_ok("on nopass ~t:* &t:* +@all");
    EXPECT(&t, NOPERM_RUN("randomkey"), ACL_REASON_SERVER, 0, "RANDOMKEY");
    EXPECT(&t, NOPERM_RUN("dbsize"), ACL_REASON_SERVER, 0, "DBSIZE");
    EXPECT(&t, NOPERM_RUN("memory|stats"), ACL_REASON_SERVER, 0, "MEMORY", "STATS");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "KEYS", "t:*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "KEYS", "t:");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "KEYS", "t:[ab]?\\*");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 1, "KEYS", "*");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 1, "KEYS", "t*");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 1, "KEYS", "t?*");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 1, "KEYS", "T:*");
    EXPECT(&t, "REWRITE t:*", ACL_REASON_NONE, 0, "SCAN", "0");
    EXPECT(&t, "REWRITE t:*", ACL_REASON_NONE, 0, "SCAN", "0", "COUNT", "100");
    EXPECT(&t, "REWRITE t:*", ACL_REASON_NONE, 0, "SCAN", "0", "MATCH", "*");
    EXPECT(&t, "REWRITE t:*", ACL_REASON_NONE, 0, "SCAN", "0", "MATCH", "t:*", "MATCH", "u*");
    EXPECT(&t, "REWRITE t:*", ACL_REASON_NONE, 0, "SCAN", "0", "BOGUS", "MATCH", "t:*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SCAN", "0", "MATCH", "u*", "match", "t:x*", "TYPE", "hash");
    acl_user_deinit(&t);

    t = compile_ok("on nopass ~t:* ~u:* ~v?x &t:* +@all");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 0, "SCAN", "0");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 3, "SCAN", "0", "MATCH", "w:*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SCAN", "0", "MATCH", "u:a*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "KEYS", "u:a*");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 1, "KEYS", "v?x");
    acl_user_deinit(&t);

    /* write-only prefixes do not confine reads */
    t = compile_ok("on nopass %W~t:* +@all");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 0, "SCAN", "0");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_ENUMERATION, 1, "KEYS", "t:*");
    acl_user_deinit(&t);

    /* a user who may read every key may enumerate the keys; the server's counts are server-wide
     * (refused to a tenant unless named) */
    t = compile_ok("on nopass %R~* %W~t:* +@all +dbsize");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SCAN", "0");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "KEYS", "*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "DBSIZE");
    EXPECT(&t, NOPERM_RUN("randomkey"), ACL_REASON_SERVER, 0, "RANDOMKEY");
    acl_user_deinit(&t);
}

static void test_differences_databases_clients(void **state)
{
    (void)state;
    struct acl_user t = compile_ok("on nopass ~t:* &* +@all");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SELECT", "0");
    EXPECT(&t, NOPERM_RUN("select"), ACL_REASON_DATABASE, 1, "SELECT", "1");
    EXPECT(&t, NOPERM_RUN("select"), ACL_REASON_DATABASE, 1, "SELECT", "00");
    EXPECT(&t, NOPERM_RUN("move"), ACL_REASON_DATABASE, 0, "MOVE", "t:1", "1");
    EXPECT(&t, NOPERM_RUN("swapdb"), ACL_REASON_DATABASE, 0, "SWAPDB", "0", "1");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_DATABASE, 4, "COPY", "t:1", "t:2", "DB", "3");
    EXPECT(&t, NOPERM_KEYS, ACL_REASON_DATABASE, 6, "COPY", "t:1", "t:2", "db", "0", "DB", "1", "REPLACE");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "COPY", "t:1", "t:2", "REPLACE", "DB", "0");
    EXPECT(&t, NOPERM_RUN("client|list"), ACL_REASON_CLIENT, 0, "CLIENT", "LIST");
    EXPECT(&t, NOPERM_RUN("client|kill"), ACL_REASON_CLIENT, 0, "CLIENT", "KILL", "ID", "3");
    EXPECT(&t, NOPERM_RUN("client|pause"), ACL_REASON_CLIENT, 0, "CLIENT", "PAUSE", "10");
    EXPECT(&t, NOPERM_RUN("client|unpause"), ACL_REASON_CLIENT, 0, "CLIENT", "UNPAUSE");
    EXPECT(&t, NOPERM_RUN("client|unblock"), ACL_REASON_CLIENT, 0, "CLIENT", "UNBLOCK", "3");
    EXPECT(&t, NOPERM_RUN("client|tracking"), ACL_REASON_CLIENT, 3, "CLIENT", "TRACKING", "on", "BCAST");
    EXPECT(&t, NOPERM_RUN("client|tracking"), ACL_REASON_CLIENT, 4, "CLIENT", "TRACKING", "on", "OPTIN",
           "redirect", "4");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLIENT", "TRACKING", "on", "PREFIX", "bcast");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLIENT", "TRACKING", "on", "REDIRECT");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLIENT", "ID");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLIENT", "SETNAME", "x");
    EXPECT(&t, NOPERM_RUN("monitor"), ACL_REASON_MONITOR, 0, "MONITOR");
    acl_user_deinit(&t);

    /* channels restricted, keys free: databases are fine, other connections are not */
    t = compile_ok("on nopass ~* &t:* +@all");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SELECT", "5");
    EXPECT(&t, NOPERM_RUN("swapdb"), ACL_REASON_SERVER, 0, "SWAPDB", "0", "1"); /* others' data too */
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "MIGRATE", "h", "1", "k", "0", "10");
    EXPECT(&t, NOPERM_RUN("client|list"), ACL_REASON_CLIENT, 0, "CLIENT", "LIST");
    EXPECT(&t, NOPERM_RUN("monitor"), ACL_REASON_MONITOR, 0, "MONITOR");
    acl_user_deinit(&t);

    /* MONITOR only by name, and only with every key and channel */
    t = compile_ok("on nopass ~t:* &* +@all +monitor");
    EXPECT(&t, NOPERM_RUN("monitor"), ACL_REASON_MONITOR, 0, "MONITOR");
    acl_user_deinit(&t);
    t = compile_ok("on nopass ~* &* +@all");
    EXPECT(&t, NOPERM_RUN("monitor"), ACL_REASON_MONITOR, 0, "MONITOR");
    acl_user_deinit(&t);

    t = compile_ok("on nopass ~* &* +@all +monitor");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SELECT", "5");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "MONITOR");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLIENT", "LIST");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLIENT", "TRACKING", "on", "BCAST");
    acl_user_deinit(&t);
}

static void test_differences_channels(void **state)
{
    (void)state;
    struct acl_user t = compile_ok("on nopass ~t:* &* +@all");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "SUBSCRIBE", "__keyspace@0__:u:1");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 2, "SUBSCRIBE", "x", "__keyevent@0__:del");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "SUBSCRIBE", "__redis__:invalidate");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "PUBLISH", "__redis__:invalidate", "x");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "PSUBSCRIBE", "*");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "PSUBSCRIBE", "__*");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "PSUBSCRIBE", "[_]_k*");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "PSUBSCRIBE", "?_redis__");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PSUBSCRIBE", "news.*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PSUBSCRIBE", "_x*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PSUBSCRIBE", "[^_]*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SUBSCRIBE", "__keys");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "UNSUBSCRIBE", "__redis__:invalidate");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_ENUMERATION, 0, "PUBSUB", "CHANNELS");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 2, "PUBSUB", "CHANNELS", "*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PUBSUB", "CHANNELS", "news*");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PUBSUB", "NUMSUB", "a", "b");
    acl_user_deinit(&t);

    t = compile_ok("on nopass ~* &t:* &__keyspace@0__:t:* +@all");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_SYSTEM_CHANNEL, 1, "PSUBSCRIBE", "__keyspace@0__:t:*");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_ENUMERATION, 0, "PUBSUB", "CHANNELS");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PUBSUB", "CHANNELS", "t:*");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_ENUMERATION, 2, "PUBSUB", "SHARDCHANNELS", "t:a*");
    EXPECT(&t, NOPERM_CHANNELS, ACL_REASON_ENUMERATION, 3, "PUBSUB", "NUMSUB", "t:1", "u:1");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PUBSUB", "SHARDNUMSUB", "t:1");
    EXPECT(&t, NOPERM_RUN("pubsub|numpat"), ACL_REASON_SERVER, 0, "PUBSUB", "NUMPAT");
    acl_user_deinit(&t);
    t = compile_ok("on nopass ~* &t:* +@all +pubsub|numpat");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PUBSUB", "NUMPAT");
    acl_user_deinit(&t);
}

static void test_differences_server_wide(void **state)
{
    (void)state;
    const char *const tenants[] = {"on nopass ~t:* &t:* +@all", "on nopass ~t:* &t:* +@all -@dangerous",
                                   "on nopass ~* &t:* +@all", "on nopass ~t:* &* +@all"};
    for (size_t i = 0; i < sizeof tenants / sizeof tenants[0]; i++) {
        struct acl_user t = compile_ok(tenants[i]);
        /* Every command of the class, with enough arguments for its arity: never simply run. */
        for (size_t c = 0; c < cmdtab_command_count; c++) {
            const struct cmdtab_cmd *top = &cmdtab_commands[c];
            size_t nsub = top->subcommands ? top->subcommand_count : 1;
            for (size_t j = 0; j < nsub; j++) {
                const struct cmdtab_cmd *cmd = top->subcommands ? &top->subcommands[j] : top;
                if (!cmdtab_server_wide(cmd))
                    continue;
                const char *bar = strchr(cmd->name, '|');
                char name[64], sub[64];
                snprintf(name, sizeof name, "%.*s", bar ? (int)(bar - cmd->name) : (int)strlen(cmd->name), cmd->name);
                snprintf(sub, sizeof sub, "%s", bar ? bar + 1 : "t:x");
                size_t want = cmd->arity < 0 ? (size_t)-cmd->arity : (size_t)cmd->arity;
                const char *args[8] = {name, sub, "t:x", "t:y", "t:z", "t:w", NULL, NULL};
                args[want < 6 ? want : 6] = NULL;
                struct acl_verdict v;
                const char *r = judge_v(&t, &v, args);
                bool confined = strcmp(cmd->name, "keys") == 0 || strcmp(cmd->name, "scan") == 0;
                if (strcmp(r, "OK") == 0 && !(confined && (t.flags & ACL_USER_READ_ALL)) &&
                    !(confined && strcmp(cmd->name, "keys") == 0))
                    fail_msg("%s: %s runs as it is", tenants[i], cmd->name);
            }
        }
        acl_user_deinit(&t);
    }

    struct acl_user t = compile_ok("on nopass ~t:* &t:* +@all");
    EXPECT(&t, NOPERM_RUN("slowlog|get"), ACL_REASON_SERVER, 0, "SLOWLOG", "GET");
    EXPECT(&t, NOPERM_RUN("latency|reset"), ACL_REASON_SERVER, 0, "LATENCY", "RESET");
    EXPECT(&t, NOPERM_RUN("memory|doctor"), ACL_REASON_SERVER, 0, "MEMORY", "DOCTOR");
    EXPECT(&t, NOPERM_RUN("lastsave"), ACL_REASON_SERVER, 0, "LASTSAVE");
    EXPECT(&t, NOPERM_RUN("readonly"), ACL_REASON_SERVER, 0, "READONLY");
    EXPECT(&t, NOPERM_RUN("pubsub|numpat"), ACL_REASON_SERVER, 0, "PUBSUB", "NUMPAT");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SLOWLOG", "HELP");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "TIME");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "CLUSTER", "KEYSLOT", "x");
    EXPECT(&t, "SCOPED info", ACL_REASON_NONE, 0, "INFO");
    EXPECT(&t, "SCOPED info", ACL_REASON_NONE, 0, "INFO", "keyspace");
    EXPECT(&t, "SCOPED whoami", ACL_REASON_NONE, 0, "ACL", "WHOAMI");
    acl_user_deinit(&t);

    /* named: granted; the class's other members stay refused */
    t = compile_ok("on nopass ~t:* &t:* +@all +slowlog +latency|latest +info");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SLOWLOG", "GET");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SLOWLOG", "RESET");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "LATENCY", "LATEST");
    EXPECT(&t, NOPERM_RUN("latency|reset"), ACL_REASON_SERVER, 0, "LATENCY", "RESET");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "INFO", "keyspace");
    acl_user_deinit(&t);

    /* INFO is never refused: the scoped form for rules without it (Redis would refuse) */
    t = compile_ok("on nopass ~* &* +@all -@dangerous");
    EXPECT(&t, "SCOPED info", ACL_REASON_NONE, 0, "INFO");
    EXPECT(&t, "SCOPED whoami", ACL_REASON_NONE, 0, "ACL", "WHOAMI");
    EXPECT(&t, NOPERM_RUN("slowlog|get"), ACL_REASON_REDIS, 0, "SLOWLOG", "GET");
    acl_user_deinit(&t);
    t = compile_ok("on nopass ~* &* +get");
    EXPECT(&t, "SCOPED info", ACL_REASON_NONE, 0, "INFO", "server");
    EXPECT(&t, NOPERM_RUN("acl|whoami"), ACL_REASON_REDIS, 0, "ACL", "WHOAMI");
    acl_user_deinit(&t);

    /* not a tenant: as Redis */
    t = compile_ok("on nopass ~* &* +@all");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "SLOWLOG", "GET");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "INFO");
    EXPECT(&t, "OK", ACL_REASON_NONE, 0, "PUBSUB", "NUMPAT");
    acl_user_deinit(&t);
}

/* ---------------------------------------------------------------------------------------- */
/* glob                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static bool gm(const char *p, const char *s)
{
    return glob_match(p, strlen(p), s, strlen(s));
}

static void test_glob(void **state)
{
    (void)state;
    assert_true(gm("", ""));
    assert_false(gm("*", ""));   /* Redis: the empty string matches only the empty pattern */
    assert_false(gm("?", ""));
    assert_true(gm("*", "a"));
    assert_true(gm("a*", "a"));
    assert_true(gm("a**", "a"));
    assert_true(gm("*a", "a"));
    assert_true(gm("*a*b*c", "xaybzc"));
    assert_false(gm("*a*b*c", "xaybzcd"));
    assert_true(gm("a?c", "abc"));
    assert_false(gm("a?c", "ac"));
    assert_true(gm("[abc]", "b"));
    assert_false(gm("[abc]", "d"));
    assert_true(gm("[^abc]", "d"));
    assert_false(gm("[^abc]", "a"));
    assert_true(gm("[a-c]x", "bx"));
    assert_true(gm("[c-a]x", "bx"));   /* reversed ranges work */
    assert_true(gm("[a-]", "]"));      /* Redis reads "a-]" as the range a..] */
    assert_false(gm("[a-]", "-"));
    assert_true(gm("[\\]]", "]"));
    assert_true(gm("[\\-]", "-"));
    assert_true(gm("\\*", "*"));
    assert_false(gm("\\*", "a"));
    assert_true(gm("a\\", "a\\"));     /* a trailing backslash is itself */
    assert_true(gm("[", "[") == false); /* an unclosed set takes the rest: empty, no match */
    assert_true(gm("[ab", "a"));
    assert_true(gm("[^", "x"));        /* "[^" at the end matches any one byte */
    assert_true(gm("x[]", "x]") == false);
    assert_false(gm("[]]", "]"));    /* "[]" is an empty set: never matches */
    assert_false(gm("[]", ""));
    assert_false(gm("A*", "a"));       /* no case folding */
    /* signed ranges, as Redis on x86-64: [a-\xff] is the range -1..'a' */
    assert_true(gm("[a-\xff]", "\xff"));
    assert_true(gm("[a-\xff]", "A"));
    assert_false(gm("[a-\xff]", "b"));
    assert_false(gm("[a-\xff]", "\x80"));
    /* bytes with NUL, by length */
    assert_true(glob_match("a\0*", 3, "a\0b", 3));
    assert_false(glob_match("a\0*", 3, "a", 1));
    assert_true(glob_match("?", 1, "\0", 1));
    /* many stars: no blow-up, no recursion */
    char pat[20001], str[20001];
    for (int i = 0; i < 20000; i++)
        pat[i] = (i % 2) ? '*' : 'a';
    memset(str, 'a', 20000);
    assert_true(glob_match(pat, 20000, str, 20000));
    str[0] = 'b';
    assert_false(glob_match(pat, 20000, str, 20000));
    pat[0] = '*';
    pat[19998] = 'c';
    assert_false(glob_match(pat, 20000, str, 20000)); /* no 'c' to find */
    memset(pat, '*', 20000);
    pat[19999] = 'b';
    memset(str, 'a', 20000);
    assert_false(glob_match(pat, 20000, str, 20000));

    assert_true(glob_is_special('*') && glob_is_special('?') && glob_is_special('[') && glob_is_special('\\'));
    assert_false(glob_is_special(']') || glob_is_special('a'));
}

/* Reference for glob_may_match_prefix: some extension of prefix by up to maxlen bytes from
 * "abc" matches (complete for patterns of the tokens below). */
static bool extends(const char *p, char *s, size_t n, size_t left)
{
    if (glob_match(p, strlen(p), s, n))
        return true;
    if (left == 0)
        return false;
    for (const char *c = "abc"; *c; c++) {
        s[n] = *c;
        if (extends(p, s, n + 1, left - 1))
            return true;
    }
    return false;
}

static void test_glob_prefix(void **state)
{
    (void)state;
    assert_true(glob_may_match_prefix("*", 1, "__redis__", 9));
    assert_true(glob_may_match_prefix("__k*", 4, "__keyspace@", 11));
    assert_true(glob_may_match_prefix("__keyspace@0__:*", 16, "__keyspace@", 11));
    assert_true(glob_may_match_prefix("_", 1, "", 0));
    assert_false(glob_may_match_prefix("_", 1, "__", 2));
    assert_false(glob_may_match_prefix("[^_]*", 5, "__", 2));
    assert_false(glob_may_match_prefix("a*", 2, "__", 2));
    assert_false(glob_may_match_prefix("", 0, "_", 1));
    assert_true(glob_may_match_prefix("*x", 2, "__", 2));

    static const char *tokens[] = {"a", "b", "*", "?", "[ab]", "[^a]", "c"};
    unsigned seed = 12345;
    for (int round = 0; round < 4000; round++) {
        char pat[64] = "", pre[8] = "";
        int nt = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 5, words = 0;
        for (int i = 0; i < nt; i++) {
            const char *t = tokens[((seed = seed * 1103515245u + 12345u) >> 16) % 7];
            strcat(pat, t);
            if (strcmp(t, "*") != 0)
                words++;
        }
        int np = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 4;
        for (int i = 0; i < np; i++)
            pre[i] = "abc"[((seed = seed * 1103515245u + 12345u) >> 16) % 3];
        pre[np] = '\0';
        char buf[32];
        memcpy(buf, pre, (size_t)np);
        bool want = extends(pat, buf, (size_t)np, (size_t)words + 1);
        bool got = glob_may_match_prefix(pat, strlen(pat), pre, (size_t)np);
        if (np == 0)
            want = true; /* an empty prefix: always "may" */
        if (want != got)
            fail_msg("pattern '%s' prefix '%s': got %d, want %d", pat, pre, got, want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_forms),
        cmocka_unit_test(test_on_off_nopass),
        cmocka_unit_test(test_rule_errors),
        cmocka_unit_test(test_key_rules),
        cmocka_unit_test(test_channel_rules),
        cmocka_unit_test(test_command_rules),
        cmocka_unit_test(test_named_commands),
        cmocka_unit_test(test_guard),
        cmocka_unit_test(test_unknown_command_text),
        cmocka_unit_test(test_subcommand_and_arity_text),
        cmocka_unit_test(test_key_positions),
        cmocka_unit_test(test_key_permissions),
        cmocka_unit_test(test_too_many_keys),
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_differences_scripts),
        cmocka_unit_test(test_differences_sort_migrate),
        cmocka_unit_test(test_differences_enumeration),
        cmocka_unit_test(test_differences_databases_clients),
        cmocka_unit_test(test_differences_channels),
        cmocka_unit_test(test_differences_server_wide),
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_glob_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
