/*
 * RG_INVARIANT (include/respguard/invariant.h): compiled in (meson -Dinvariants, on in debug and
 * debugoptimized builds and in every build scripts/test.sh makes), a false condition writes
 * "file:line: func: invariant failed: cond" to stderr and aborts; compiled out, the condition is
 * not even evaluated. The failing case runs in a child process.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "respguard/invariant.h"

static int evaluated;

static int count(int v)
{
    evaluated++;
    return v;
}

static void a_true_invariant_passes(void **state)
{
    (void)state;
    evaluated = 0;
    RG_INVARIANT(count(1) == 1);
    assert_int_equal(evaluated, RG_INVARIANTS ? 1 : 0);
}

static void failing_function(void) { RG_INVARIANT(count(2) + 2 == 5); }

static void a_false_invariant_aborts_with_its_place(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        failing_function();
        _exit(0);
    }
    close(fds[1]);
    char out[512] = {0};
    size_t n = 0;
    ssize_t r;
    while (n < sizeof out - 1 && (r = read(fds[0], out + n, sizeof out - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (RG_INVARIANTS) {
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGABRT);
        assert_non_null(strstr(out, "test_invariant.c:"));
        assert_non_null(strstr(out, ": failing_function: invariant failed: count(2) + 2 == 5\n"));
    } else {
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_string_equal(out, "");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_true_invariant_passes),
        cmocka_unit_test(a_false_invariant_aborts_with_its_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
