/*
 * RG_INVARIANT(cond): respguard's one runtime assertion.
 *
 * When invariants are compiled in (RG_INVARIANTS=1, set by meson's `invariants` option: on by
 * default in debug and debugoptimized builds, and in every build scripts/test.sh makes) a false
 * condition writes "file:line: func: invariant failed: cond" to stderr and aborts. Otherwise the
 * condition is only type-checked, never evaluated, so it must have no side effects.
 *
 * Use it for what the code itself guarantees (a count that cannot go negative, an index inside
 * its array), where a check on every call is too dear for a release build. A check whose failure
 * could hand one client's data to another stays on in every build: log it and abort() there, as
 * pool.c and session.c do for illegal state changes. Do not use <assert.h>'s assert().
 */
#ifndef RESPGUARD_INVARIANT_H
#define RESPGUARD_INVARIANT_H

#ifndef RG_INVARIANTS
#define RG_INVARIANTS 0
#endif

#if RG_INVARIANTS
#include <stdio.h>
#include <stdlib.h>

__attribute__((noreturn, cold)) static inline void rg_invariant_failed(const char *file, int line,
                                                                       const char *func,
                                                                       const char *cond)
{
    fprintf(stderr, "%s:%d: %s: invariant failed: %s\n", file, line, func, cond);
    fflush(stderr);
    abort();
}

#define RG_INVARIANT(cond)                                                                    \
    ((void)(__builtin_expect(!!(cond), 1) ? 0                                                 \
                                          : (rg_invariant_failed(__FILE__, __LINE__, __func__, \
                                                                 #cond),                     \
                                             0)))
#else
#define RG_INVARIANT(cond) ((void)sizeof(!(cond)))
#endif

#endif
