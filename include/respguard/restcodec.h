/*
 * restcodec: the Upstash REST API's command and reply formats, as pure functions over bytes.
 *
 *  - Decoding (HTTP request -> argv): the JSON body of "POST /" (["SET","k","v","EX",100]), the
 *    bodies of "POST /pipeline" and "POST /multi-exec" (arrays of such arrays), and the path form
 *    ("/set/k/v", percent-decoded segments, an optional POST body as one more argument, then the
 *    query string's parameters except _token). JSON is parsed by jansson; a small pre-scan of
 *    our own bounds the nesting before jansson sees the text and recovers each number's text as
 *    it was written (jansson keeps only the value).
 *  - Encoding (one complete RESP2 reply frame -> Upstash's JSON): {"result": ...} or
 *    {"error": "..."}, per-command entries for a pipeline, the EXEC array's entries for a
 *    multi-exec; with Upstash-Encoding: base64 every string is base64 except a top-level simple
 *    string "OK".
 *
 * No socket, no event loop. Decoded arguments live in the decoder's arena, which is reused
 * from one request to the next (restcodec_decoder_reset), so steady state allocates nothing but
 * jansson's own per-value nodes. Only src/restcodec.c includes <jansson.h>.
 *
 * Upstash facts this follows (checked against @upstash/redis 1.39.0's dist/nodejs.js and
 * https://upstash.com/docs/redis/features/restapi):
 *  - the SDK POSTs JSON.stringify(command) to "/" (one command) or to "/pipeline" and
 *    "/multi-exec" (arrays of commands), always with Upstash-Encoding: base64 unless told
 *    otherwise; by default it auto-pipelines, so even single commands arrive as /pipeline;
 *  - arguments are strings, numbers as JavaScript prints them (100, 1.5, 1e+21; NaN and
 *    Infinity become null) and booleans as JSON true/false (redis.set("flag", true) sends
 *    ["set","flag",true]: see bools_as_text); objects are stringified by the SDK;
 *  - a failed single command is HTTP 400 {"error": "..."}; /pipeline and /multi-exec answer
 *    200 with an array of {"result": ...} / {"error": "..."} (the SDK reads res.ok first, then
 *    each entry's error);
 *  - with base64 the SDK decodes a top-level result string unless it is exactly "OK", and EVERY
 *    string directly inside a top-level array (atob("OK") is "8"), so only the top-level simple
 *    string "OK" is left as it is.
 */
#ifndef RESPGUARD_RESTCODEC_H
#define RESPGUARD_RESTCODEC_H

#include <stdbool.h>
#include <stddef.h>

#include "respguard/resp.h"

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* A field left 0 takes its value from RESTCODEC_DEFAULT_LIMITS; a NULL limits pointer means
 * all of them. */
struct restcodec_limits {
    size_t max_depth;     /* JSON nesting deeper than this is refused before parsing (a command
                             is depth 1, a pipeline depth 2) */
    size_t max_args;      /* arguments in one command, command name included */
    size_t max_commands;  /* commands in one /pipeline or /multi-exec body */
    size_t max_bytes;     /* all decoded argument bytes of the request together */
    bool bools_as_text;   /* accept JSON true/false as the arguments "true"/"false" (what the
                             SDK sends for a boolean value); otherwise they are refused */
};

#define RESTCODEC_DEFAULT_DEPTH 8
#define RESTCODEC_DEFAULT_LIMITS                                                             \
    ((struct restcodec_limits){.max_depth = RESTCODEC_DEFAULT_DEPTH,                         \
                               .max_args = RESP_DEFAULT_MAX_ARGS,                            \
                               .max_commands = 10000,                                        \
                               .max_bytes = RESP_DEFAULT_MAX_REQUEST})

struct restcodec_cmd {
    size_t argc;           /* >= 1 */
    struct resp_arg *argv; /* in the decoder's arena (the path form's body: a view of it) */
};

struct restcodec_chunk; /* private to restcodec.c */

struct restcodec_decoder {
    struct restcodec_cmd *cmds; /* after a successful decode: ncmds commands */
    size_t ncmds;
    /* Private to restcodec.c. */
    struct restcodec_chunk *chunks; /* the arena: a list of blocks, reused after a reset */
    struct restcodec_chunk *cur;
    size_t decoded_bytes;
    char errbuf[96];
};

enum restcodec_status {
    RESTCODEC_OK = 0,
    RESTCODEC_BAD_REQUEST = -1, /* *err: a short text for a 400 {"error": "..."} reply */
    RESTCODEC_NOMEM = -2,       /* *err says so too; a 500 */
};

void restcodec_decoder_init(struct restcodec_decoder *d);
void restcodec_decoder_deinit(struct restcodec_decoder *d);
/* Forget the last request's commands; keep (a bounded amount of) the arena for the next. */
void restcodec_decoder_reset(struct restcodec_decoder *d);

/* "POST /": body is one JSON array, one command. d->ncmds == 1 on success. */
enum restcodec_status restcodec_decode_command(struct restcodec_decoder *d, const char *body,
                                               size_t len, const struct restcodec_limits *lim,
                                               const char **err);

/* "POST /pipeline", "POST /multi-exec": body is a non-empty JSON array of command arrays. */
enum restcodec_status restcodec_decode_commands(struct restcodec_decoder *d, const char *body,
                                                size_t len, const struct restcodec_limits *lim,
                                                const char **err);

/* The path form. path is the request target's path as it came (still percent-encoded, starting
 * with '/', no '?'); query the part after '?' (NULL or empty when none); body the POST body
 * (NULL when there is none: a present but empty body is an empty argument). Arguments: the
 * path's segments ("/set/k/v" -> SET k v; "/get//x" has an empty middle argument; a single
 * trailing '/' is ignored), then the body as it is, then each query parameter as "name" and,
 * when it has "=value", "value" ('+' is a space there, as in forms), skipping _token. The
 * HTTP layer must hand over the path undecoded (so that "%2F" stays inside one argument).
 * Arguments other than the body are copied into the arena; the body's is a view of body. */
enum restcodec_status restcodec_decode_path(struct restcodec_decoder *d, const char *path,
                                            size_t path_len, const char *query, size_t query_len,
                                            const char *body, size_t body_len,
                                            const struct restcodec_limits *lim, const char **err);

/* The value of query parameter `name` (the first one so named) percent-decoded ('+' is a space)
 * into dst[0..cap): its length, -1 when there is no such parameter, -2 when its encoding is
 * malformed or it does not fit. For ?_token=. */
long restcodec_query_param(const char *query, size_t len, const char *name, char *dst, size_t cap);

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* A growable output buffer; reuse it across replies. restcodec_buf_free gives it back. */
struct restcodec_buf {
    char *data;
    size_t len;
    size_t cap;
};

void restcodec_buf_free(struct restcodec_buf *b);
/* Append n bytes as they are (the HTTP layer's brackets and commas, raw RESP2 bodies). 0 or -1. */
int restcodec_buf_append_raw(struct restcodec_buf *b, const char *s, size_t n);

#define RESTCODEC_BASE64 1u /* Upstash-Encoding: base64 */

/* Replies nested deeper than this are refused (-1): the JSON would be deeper than what common
 * parsers take (jansson stops at 2048 levels, Python's json near 1000). */
#define RESTCODEC_MAX_REPLY_DEPTH 1024

/* Values: simple and bulk strings are JSON strings, integers numbers, nil bulk strings and nil
 * arrays null, arrays arrays. An error nested inside an array (not the reply itself) is the
 * string of its text. Only RESP2 types: a RESP3 frame is malformed here.
 *
 * Without RESTCODEC_BASE64 a string that is not valid UTF-8 cannot be a JSON string: each byte
 * of an invalid sequence becomes U+FFFD (as Go's encoding/json does). Clients that need the
 * bytes ask for base64, which the SDK does by default. */

/* One command's reply frame reply[0..len) (exactly one complete RESP2 frame) as a whole body:
 * {"result": ...} with *status 200, or for an error reply {"error": "<text without '-'>"} with
 * *status 400. Appends to out. Returns 0, or -1 when reply is not exactly one well-formed RESP2
 * frame (nothing appended) or memory ran out. */
int restcodec_encode_single(struct restcodec_buf *out, const char *reply, size_t len,
                            unsigned flags, int *status);

/* One entry of a /pipeline or /multi-exec answer: {"result": ...} or {"error": "..."}. A
 * caller building a pipeline answer appends '[', the entries with ',' between, then ']',
 * status 200. Returns 1 for an error entry, 0 for a result, -1 as above. */
int restcodec_encode_entry(struct restcodec_buf *out, const char *reply, size_t len,
                           unsigned flags);

/* The whole /pipeline answer from its n reply frames: [entry,...], status 200. 0 or -1. */
int restcodec_encode_pipeline(struct restcodec_buf *out, const struct resp_arg *replies,
                              size_t n, unsigned flags);

/* The /multi-exec answer from EXEC's reply frame: its array's elements as entries ([...],
 * *status 200); when EXEC failed (an error, e.g. EXECABORT, or a nil array) one
 * {"error": "..."} with *status 400. 0 or -1. */
int restcodec_encode_exec(struct restcodec_buf *out, const char *exec_reply, size_t len,
                          unsigned flags, int *status);

/* {"error": "<msg>"} for the codec's own and the HTTP layer's errors. 0 or -1. */
int restcodec_encode_error(struct restcodec_buf *out, const char *msg, size_t len);

/* Decodes base64 (the standard alphabet, '=' padding required) into dst (at least
 * len / 4 * 3 bytes); returns the decoded length or -1. For tests and clients of the codec. */
long restcodec_base64_decode(const char *src, size_t len, char *dst);

#endif
