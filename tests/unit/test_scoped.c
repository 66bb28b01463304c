/*
 * Unit tests for scoped: the INFO respguard gives a tenant.
 *
 * The INFO text below has the shape and fields of redis-server 7.0.15's answer to
 * "INFO server memory persistence cluster"; the filter must keep exactly the listed fields.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/scoped.h"

static const char info_text[] =
    "# Server\r\n"
    "redis_version:7.0.15\r\n"
    "redis_git_sha1:00000000\r\n"
    "redis_mode:standalone\r\n"
    "os:Linux 6.1.0 x86_64\r\n"
    "process_id:25152\r\n"
    "run_id:a1cc7b33acf38b370330172304197c9644be3fe8\r\n"
    "tcp_port:7399\r\n"
    "uptime_in_seconds:1\r\n"
    "executable:/usr/bin/redis-server\r\n"
    "config_file:/etc/redis/redis.conf\r\n"
    "io_threads_active:0\r\n"
    "\r\n"
    "# Memory\r\n"
    "used_memory:916704\r\n"
    "used_memory_human:895.22K\r\n"
    "maxmemory:0\r\n"
    "maxmemory_human:0B\r\n"
    "maxmemory_policy:noeviction\r\n"
    "mem_allocator:jemalloc-5.3.0\r\n"
    "\r\n"
    "# Persistence\r\n"
    "loading:0\r\n"
    "async_loading:0\r\n"
    "rdb_changes_since_last_save:12\r\n"
    "rdb_last_save_time:1796402253\r\n"
    "\r\n"
    "# Keyspace\r\n"
    "db0:keys=3,expires=0,avg_ttl=0\r\n"
    "\r\n"
    "# Cluster\r\n"
    "cluster_enabled:0\r\n";

static const char kept_all[] = "# Server\r\n"
                               "redis_version:7.0.15\r\n"
                               "redis_git_sha1:00000000\r\n"
                               "redis_mode:standalone\r\n"
                               "os:Linux 6.1.0 x86_64\r\n"
                               "uptime_in_seconds:1\r\n"
                               "io_threads_active:0\r\n"
                               "\r\n"
                               "# Memory\r\n"
                               "maxmemory:0\r\n"
                               "maxmemory_human:0B\r\n"
                               "maxmemory_policy:noeviction\r\n"
                               "mem_allocator:jemalloc-5.3.0\r\n"
                               "\r\n"
                               "# Persistence\r\n"
                               "loading:0\r\n"
                               "async_loading:0\r\n"
                               "\r\n"
                               "# Cluster\r\n"
                               "cluster_enabled:0\r\n";

/* The reply frame for text: a bulk string, or (verbatim) RESP3's "txt" verbatim string. */
static char *frame(const char *text, bool verbatim, size_t *len)
{
    size_t n = strlen(text);
    char *f = malloc(n + 64);
    assert_non_null(f);
    int h = verbatim ? sprintf(f, "=%zu\r\ntxt:", n + 4) : sprintf(f, "$%zu\r\n", n);
    memcpy(f + h, text, n);
    memcpy(f + h + n, "\r\n", 2);
    *len = (size_t)h + n + 2;
    return f;
}

static void expect_filtered(const char *text, bool verbatim, unsigned sections, const char *want)
{
    size_t len, wlen;
    char *in = frame(text, verbatim, &len);
    char *expected = frame(want, verbatim, &wlen);
    /* Exactly the frame's bytes, so AddressSanitizer sees any read past it. */
    char *exact = malloc(len);
    assert_non_null(exact);
    memcpy(exact, in, len);
    struct buf out = {0};
    assert_int_equal(scoped_info_filter(exact, len, sections, &out), 0);
    if (buf_len(&out) != wlen || memcmp(buf_head(&out), expected, wlen) != 0)
        fail_msg("got %.*s\nwant %.*s", (int)buf_len(&out), buf_head(&out), (int)wlen, expected);
    buf_free(&out);
    free(exact);
    free(in);
    free(expected);
}

static unsigned sections_of(const char *const *args, size_t n)
{
    struct resp_arg argv[8] = {{"INFO", 4}};
    for (size_t i = 0; i < n; i++)
        argv[i + 1] = (struct resp_arg){args[i], strlen(args[i])};
    return scoped_info_sections(n + 1, argv);
}

static void test_keeps_only_listed_fields(void **state)
{
    (void)state;
    const unsigned all = sections_of(NULL, 0);
    expect_filtered(info_text, false, all, kept_all);
    expect_filtered(info_text, true, all, kept_all);
}

static void test_sections(void **state)
{
    (void)state;
    static const char *const def[] = {"default"}, *const every[] = {"EVERYTHING"}, *const mem[] = {"Memory"},
                             *const keyspace[] = {"keyspace"}, *const two[] = {"cluster", "server"},
                             *const stats[] = {"stats", "clients", "commandstats"};
    assert_int_equal(sections_of(def, 1), sections_of(NULL, 0));
    assert_int_equal(sections_of(every, 1), sections_of(NULL, 0));
    expect_filtered(info_text, false, sections_of(mem, 1),
                    "# Memory\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\n"
                    "mem_allocator:jemalloc-5.3.0\r\n");
    /* Sections with nothing kept: an empty string, as Redis answers an unknown section. */
    expect_filtered(info_text, false, sections_of(keyspace, 1), "");
    expect_filtered(info_text, true, sections_of(stats, 3), "");
    /* In Redis's order, whatever the order asked. */
    expect_filtered(info_text, false, sections_of(two, 2),
                    "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n"
                    "os:Linux 6.1.0 x86_64\r\nuptime_in_seconds:1\r\nio_threads_active:0\r\n\r\n"
                    "# Cluster\r\ncluster_enabled:0\r\n");
}

static void test_nothing_outside_the_lists(void **state)
{
    (void)state;
    /* A field before any section, an unknown section, a kept name in an excluded section, a
     * header without its space, LF-only lines: none of it passes. */
    static const char odd[] = "redis_version:6.6.6\r\n"
                              "# Clients\r\nredis_version:1\r\nconnected_clients:5\r\n"
                              "#Server\r\nloading:1\r\n"
                              "# Future\nmaxmemory_policy:x\n"
                              "# Persistence\nloading:0\nrdb_bgsave_in_progress:0\n";
    expect_filtered(odd, false, sections_of(NULL, 0), "# Persistence\r\nloading:0\r\n");
}

static void test_errors_and_bad_replies(void **state)
{
    (void)state;
    struct buf out = {0};
    static const char loading[] = "-LOADING Redis is loading the dataset in memory\r\n";
    assert_int_equal(scoped_info_filter(loading, sizeof loading - 1, 15, &out), 0);
    assert_int_equal(buf_len(&out), sizeof loading - 1);
    assert_memory_equal(buf_head(&out), loading, sizeof loading - 1);
    static const char *const bad[] = {"+OK\r\n", "$5\r\nabc\r\n", "$-1\r\n", "=3\r\ntxt\r\n", "*1\r\n$1\r\na\r\n", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        buf_reset(&out);
        assert_int_equal(scoped_info_filter(bad[i], strlen(bad[i]), 15, &out), 0);
        assert_true(buf_len(&out) > 5);
        assert_memory_equal(buf_head(&out), "-ERR respguard:", 15);
    }
    buf_free(&out);
}

static void test_upstream_command(void **state)
{
    (void)state;
    assert_int_equal(scoped_info_command_len, strlen(scoped_info_command));
    assert_string_equal(scoped_info_command,
                        "*5\r\n$4\r\nINFO\r\n$6\r\nserver\r\n$6\r\nmemory\r\n$11\r\npersistence\r\n$7\r\ncluster\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keeps_only_listed_fields),
        cmocka_unit_test(test_sections),
        cmocka_unit_test(test_nothing_outside_the_lists),
        cmocka_unit_test(test_errors_and_bad_replies),
        cmocka_unit_test(test_upstream_command),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
