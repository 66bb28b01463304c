/*
 * fuzz_reply: libFuzzer target for the reply framer (resp_framer_feed).
 *
 * The first input byte chooses max_depth and max_bulk, the second how the stream is cut; the
 * rest is an upstream's byte stream. Checked beyond "no crash, no sanitizer report": the frames
 * (where they end, what resp_frame_info says) and the error, if any, are the same whether the
 * stream is fed whole or in pieces, and the framer keeps its own contract (consumed bounds,
 * head length, sticky errors). This target must not keep state between inputs.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/resp.h"

#define FUZZ_MAX_FRAMES 512

struct fuzz_frames {
    size_t n;
    size_t end[FUZZ_MAX_FRAMES];
    struct resp_frame_info info[FUZZ_MAX_FRAMES];
    bool error;
    const char *err;
};

static void fuzz_check_info(const struct resp_frame_info *i)
{
    if (i->head_len > sizeof(i->head) || (!i->has_head && i->head_len != 0))
        __builtin_trap();
    if (i->is_error != (i->type == '-' || i->type == '!'))
        __builtin_trap();
    if ((i->kind == RESP_FRAME_PUSH) != (i->type == '>') ||
        (i->kind == RESP_FRAME_ATTRIBUTE) != (i->type == '|'))
        __builtin_trap();
}

/* Feed buf[0..len) in pieces chosen by cut(); record frames until the end or an error. */
static void fuzz_run(const char *buf, size_t len, uint8_t flags, uint32_t seed,
                     struct fuzz_frames *out)
{
    struct resp_framer f;
    size_t pos = 0;
    uint32_t x = seed | 1;

    out->n = 0;
    out->error = false;
    out->err = NULL;
    resp_framer_init(&f);
    /* 1..55 levels, or (7) no limit but the framer's own: deep frames use its heap stack */
    f.max_depth = (flags & 0x7) == 7 ? 0 : 1 + (flags & 0x7) * 9;
    if (flags & 0x8)
        f.max_bulk = (flags >> 4) * 3u;       /* 0..45 */
    while (pos < len && out->n < FUZZ_MAX_FRAMES) {
        size_t piece = len - pos;
        size_t off = 0;
        if (seed != 0) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            piece = 1 + x % 9;
            if (piece > len - pos)
                piece = len - pos;
        }
        while (off < piece && out->n < FUZZ_MAX_FRAMES) {
            size_t used = SIZE_MAX;
            struct resp_frame_info info;
            const char *err = NULL;
            enum resp_frame_status st = resp_framer_feed(&f, buf + pos + off, piece - off,
                                                         &used, &info, &err);
            if (used > piece - off)
                __builtin_trap();
            if (st == RESP_FRAME_ERROR) {
                size_t again = SIZE_MAX;
                const char *err2 = NULL;
                if (err == NULL)
                    __builtin_trap();
                /* sticky */
                if (resp_framer_feed(&f, "+OK\r\n", 5, &again, &info, &err2) != RESP_FRAME_ERROR ||
                    again != 0 || err2 != err)
                    __builtin_trap();
                out->error = true;
                out->err = err;
                resp_framer_deinit(&f); /* an error inside a deep frame leaves its stack */
                return;
            }
            if (st == RESP_FRAME_DONE) {
                if (used == 0)
                    __builtin_trap();
                fuzz_check_info(&info);
                off += used;
                out->end[out->n] = pos + off;
                out->info[out->n] = info;
                out->n++;
            } else {
                if (st != RESP_FRAME_MORE || used != piece - off)
                    __builtin_trap();
                off += used;
            }
        }
        pos += piece;
    }
    resp_framer_deinit(&f);
}

static bool fuzz_same_info(const struct resp_frame_info *a, const struct resp_frame_info *b)
{
    return a->kind == b->kind && a->type == b->type && a->is_error == b->is_error &&
           a->has_head == b->has_head && a->head_len == b->head_len &&
           memcmp(a->head, b->head, a->head_len) == 0 && a->has_last_int == b->has_last_int &&
           (!a->has_last_int || a->last_int == b->last_int) && a->elements == b->elements;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_frames *whole, *split;
    uint8_t flags;
    uint32_t seed;

    if (size < 2)
        return 0;
    flags = data[0];
    seed = (uint32_t)data[1] * 2654435761u + 1;
    whole = malloc(sizeof(*whole));
    split = malloc(sizeof(*split));
    if (whole == NULL || split == NULL) {
        free(whole);
        free(split);
        return 0;
    }
    fuzz_run((const char *)data + 2, size - 2, flags, 0, whole);
    fuzz_run((const char *)data + 2, size - 2, flags, seed, split);
    if (whole->n == split->n && whole->error == split->error) {
        for (size_t i = 0; i < whole->n; i++)
            if (whole->end[i] != split->end[i] ||
                !fuzz_same_info(&whole->info[i], &split->info[i]))
                __builtin_trap();
        if (whole->error && strcmp(whole->err, split->err) != 0)
            __builtin_trap();
    } else if (whole->n < FUZZ_MAX_FRAMES && split->n < FUZZ_MAX_FRAMES) {
        __builtin_trap();
    }
    free(whole);
    free(split);
    return 0;
}
