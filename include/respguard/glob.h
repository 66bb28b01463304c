/*
 * glob: Redis's glob patterns (stringmatchlen in Redis 7.0's util.c, case-sensitive mode),
 * byte-exact and length-aware, for ACL key and channel patterns.
 *
 * Syntax: '*' any run of bytes, '?' one byte, '[...]' one byte from a set ('^' first negates,
 * 'a-z' ranges, '\x' a literal x), '\x' a literal x, anything else itself. Redis's corner cases
 * are kept on purpose so that a verdict never differs from Redis's own:
 *  - the empty string matches only the empty pattern ("*" does not match "");
 *  - range ends compare as signed chars, as on x86-64 Redis ("[a-\xff]" is the range
 *    -1..'a'), and "[a-]" is the range 'a'..']';
 *  - an unclosed '[' takes the rest of the pattern as its set; a trailing '\' is a literal.
 *
 * Pure: no allocation, no recursion (a pattern of many '*' cannot exhaust the stack), never
 * reads outside the given lengths, no C-string functions, no case folding.
 */
#ifndef RESPGUARD_GLOB_H
#define RESPGUARD_GLOB_H

#include <stdbool.h>
#include <stddef.h>

/* Does pattern pat match the string s exactly (Redis's stringmatchlen(pat, s, nocase=0))? */
bool glob_match(const char *pat, size_t plen, const char *s, size_t slen);

/* Could pat match some string that begins with prefix? True when a prefix of pat's tokens
 * matches all of prefix (an over-approximation: the rest of the pattern is assumed to be able
 * to match something). Used to refuse patterns that could reach reserved channels. */
bool glob_may_match_prefix(const char *pat, size_t plen, const char *prefix, size_t prefix_len);

/* Is the byte a glob special character ('*', '?', '[' or '\')? */
bool glob_is_special(char c);

#endif
