/*
 * libFuzzer target for the ACL rule compiler and the verdict (acl.c, glob.c, and the key and
 * channel extraction of cmdtab.c they drive).
 *
 * Input: the rules, a NUL byte, then the command's arguments separated by NUL bytes (the first
 * is the command name; an input without a NUL is rules only and a fixed set of commands). The
 * rules are compiled with a guard list; when they compile, the command is judged with
 * acl_check and again with acl_check_ex and scratch for every argument, and the error line is
 * built into a buffer of exact size and into a short one.
 *
 * Properties checked besides memory safety: the two checks agree unless acl_check ran out of
 * stack room (ACL_REASON_TOO_MANY); an allowed verdict has no error line and a refused one a
 * line shorter than ACL_ERROR_MAX without CR or LF; a refused key or channel names a real
 * argument position; acl_verdict_error never writes past its buffer and always terminates it.
 *
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude src/acl.c src/glob.c src/cmdtab.c \
 *       src/cmdtab_data.c src/crypto.c tests/fuzz/fuzz_acl.c -lcrypto -o fuzz_acl && \
 *       ./fuzz_acl -max_total_time=60 corpus/
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/acl.h"
#include "respguard/glob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ARGS 1024

static const char *const never[] = {"flushall", "config", "client|kill", "debug", "nosuch", "get|x"};

static void judge(const struct acl_user *u, size_t argc, const struct resp_arg *argv)
{
    static struct cmdtab_key keys[MAX_ARGS];
    static struct cmdtab_channel chans[MAX_ARGS];
    struct acl_verdict a, b;
    int ra = acl_check(u, argc, argv, &a);
    int rb = acl_check_ex(u, argc, argv, &b, keys, chans, MAX_ARGS);
    if (a.reason != ACL_REASON_TOO_MANY && (ra != rb || a.result != b.result || a.reason != b.reason || a.pos != b.pos))
        abort();

    char buf[ACL_ERROR_MAX];
    size_t n = acl_verdict_error(&b, argc, argv, buf, sizeof buf);
    if (rb == 0) {
        if (n != 0 || (b.result != ACL_OK && b.result != ACL_OK_APPEND_MATCH))
            abort();
        if (b.result == ACL_OK_APPEND_MATCH && (b.match == NULL || b.match_len == 0))
            abort();
        return;
    }
    if (n == 0 || n >= ACL_ERROR_MAX || strlen(buf) != n || memchr(buf, '\r', n) || memchr(buf, '\n', n))
        abort();
    if ((b.result == ACL_DENIED_KEY || b.result == ACL_DENIED_CHANNEL) && b.pos >= argc)
        abort();
    char small[7];
    memset(small, 'x', sizeof small);
    size_t m = acl_verdict_error(&b, argc, argv, small, 5);
    if (m != n || small[4] != '\0' || small[5] != 'x')
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The rules: up to the first NUL, as a C string. */
    const uint8_t *nul = memchr(data, 0, size);
    size_t rlen = nul ? (size_t)(nul - data) : size;
    char *rules = malloc(rlen + 1);
    if (!rules)
        return 0;
    memcpy(rules, data, rlen);
    rules[rlen] = '\0';

    struct acl_user u;
    char err[256];
    size_t off = 0;
    int rc = acl_user_compile("fuzz", rules, never, sizeof never / sizeof never[0], &u, err, sizeof err, &off);
    if (rc == -EINVAL && (off > rlen || strncmp(err, "Error in ACL SETUSER modifier '", 31) != 0))
        abort();
    if (rc == 0) {
        (void)acl_user_check_password(&u, rules, rlen);
        (void)acl_user_names_command(&u, "client", "kill");
        if (nul) {
            static struct resp_arg argv[MAX_ARGS];
            size_t argc = 0;
            const uint8_t *p = nul + 1, *end = data + size;
            while (argc < MAX_ARGS) {
                const uint8_t *z = memchr(p, 0, (size_t)(end - p));
                const uint8_t *stop = z ? z : end;
                argv[argc++] = (struct resp_arg){(const char *)p, (size_t)(stop - p)};
                if (!z)
                    break;
                p = z + 1;
            }
            judge(&u, argc, argv);
            /* the arguments as glob patterns against each other */
            if (argc >= 2) {
                (void)glob_match(argv[0].ptr, argv[0].len, argv[1].ptr, argv[1].len);
                (void)glob_may_match_prefix(argv[1].ptr, argv[1].len, argv[0].ptr, argv[0].len);
            }
        } else {
            static const struct resp_arg cmds[][4] = {
                {{"GET", 3}, {"k", 1}},
                {{"SCAN", 4}, {"0", 1}},
                {{"PSUBSCRIBE", 10}, {"*", 1}},
                {{"CONFIG", 6}, {"GET", 3}, {"x", 1}},
            };
            static const size_t counts[] = {2, 2, 2, 3};
            for (size_t i = 0; i < 4; i++)
                judge(&u, counts[i], cmds[i]);
        }
    }
    acl_user_deinit(&u);
    free(rules);
    return 0;
}
