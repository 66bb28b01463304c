/* Unit tests for acl: the login part of ACL rules and the commands a user names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "respguard/acl.h"

static struct acl_user compile_ok(const char *rules)
{
    struct acl_user u;
    char err[256] = "";
    size_t off = 0;
    int rc = acl_user_compile("u", rules, &u, err, sizeof err, &off);
    if (rc != 0)
        fail_msg("compile failed: %s", err);
    return u;
}

static void test_password_forms(void **state)
{
    (void)state;
    char hash[66];
    acl_hash_password("hashed", 6, hash);
    assert_int_equal(hash[0], '#');
    assert_int_equal(strlen(hash), 65);
    /* sha256("hashed") computed independently */
    assert_string_equal(hash, "#1a06df824ed741b53c785079a6347f00eec5af82f9850775409ca69dff4068a6");

    char rules[128];
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
}

static void test_on_off_nopass(void **state)
{
    (void)state;
    struct acl_user u = compile_ok("off >x");
    assert_false(acl_user_check_password(&u, "x", 1)); /* disabled users never log in */
    acl_user_deinit(&u);

    u = compile_ok("on nopass");
    assert_true(acl_user_check_password(&u, "anything", 8));
    acl_user_deinit(&u);

    u = compile_ok("on nopass >p"); /* a password after nopass ends nopass, as in Redis */
    assert_false(u.nopass);
    assert_false(acl_user_check_password(&u, "other", 5));
    assert_true(acl_user_check_password(&u, "p", 1));
    acl_user_deinit(&u);

    u = compile_ok("on >a >b <a");
    assert_false(acl_user_check_password(&u, "a", 1));
    assert_true(acl_user_check_password(&u, "b", 1));
    acl_user_deinit(&u);

    u = compile_ok("on >a resetpass");
    assert_false(acl_user_check_password(&u, "a", 1));
    acl_user_deinit(&u);

    u = compile_ok("on >a +flushdb reset");
    assert_false(u.enabled);
    assert_int_equal(u.hash_count, 0);
    assert_false(acl_user_names_command(&u, "flushdb", NULL));
    acl_user_deinit(&u);

    u = compile_ok("");
    assert_false(u.enabled); /* users start with nothing, as in Redis */
    acl_user_deinit(&u);
}

static void test_errors(void **state)
{
    (void)state;
    struct acl_user u;
    char err[256];
    size_t off = 0;
    assert_int_equal(acl_user_compile("u", "on #abc", &u, err, sizeof err, &off), -EINVAL);
    assert_int_equal(off, 3);
    assert_non_null(strstr(err, "Error in ACL SETUSER modifier '#abc'"));
    acl_user_deinit(&u);

    assert_int_equal(acl_user_compile("u", "on <secretpw", &u, err, sizeof err, &off), -EINVAL);
    assert_null(strstr(err, "secretpw")); /* a password never appears in an error */
    assert_non_null(strstr(err, "'<***'"));
    acl_user_deinit(&u);

    assert_int_equal(acl_user_compile("u", "on +|x", &u, err, sizeof err, &off), -EINVAL);
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
    assert_false(acl_user_names_command(&u, "config", "set")); /* the subcommand rule wins */
    assert_string_equal(u.rules, "~* +@all +FLUSHDB +client|kill -config|set +config");
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
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_forms),
        cmocka_unit_test(test_on_off_nopass),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_named_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
