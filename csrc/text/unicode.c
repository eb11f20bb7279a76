/* text/unicode.c: UTF-8 decoding and the lookup of each code point's class flags in the
 * generated two-stage table (text/unicode_data.h). */
#include "text/unicode.h"

#include "text/unicode_data.h"

const uint8_t *const mp_unicode_stage1 = mp_unicode_stage1_data;
const uint8_t *const mp_unicode_stage2 = mp_unicode_stage2_data;

_Static_assert(MP_UNICODE_BLOCK == 128, "mp_unicode_flags assumes 128-code-point blocks");
_Static_assert(sizeof mp_unicode_stage1_data == 0x110000 / MP_UNICODE_BLOCK, "stage 1 covers every code point");

uint32_t mp_unicode_fold_ascii(uint32_t cp) {
    if (cp >= 'A' && cp <= 'Z') return cp + ('a' - 'A');
    if (cp < 0x80) return cp;
    for (int i = 0; i < MP_UNICODE_ASCII_FOLD_COUNT; i++)
        if (mp_unicode_ascii_fold_data[i].cp == cp) return (uint32_t)mp_unicode_ascii_fold_data[i].ascii;
    return cp;
}

int mp_utf8_decode(uint32_t *cp, const char *s, int64_t n) {
    if (n <= 0) return 0;
    const unsigned char *u = (const unsigned char *)s;
    unsigned c = u[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v;
    if (c >= 0xc2 && c <= 0xdf) len = 2, v = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, v = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, v = c & 0x07;
    else return 0; // continuation byte, 0xc0/0xc1 (always overlong) or 0xf5..0xff
    if (n < len) return 0;
    for (int k = 1; k < len; k++) {
        if ((u[k] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (u[k] & 0x3f);
    }
    if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10ffff)) || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

int64_t mp_utf8_validate(const char *s, int64_t n) {
    int64_t i = 0;
    uint32_t cp;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        int len = mp_utf8_decode(&cp, s + i, n - i);
        if (len == 0) return i;
        i += len;
    }
    return n;
}

int mp_utf8_encode(char *out, uint32_t cp) {
    unsigned char *u = (unsigned char *)out;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (unsigned char)(0xc0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (unsigned char)(0xe0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    u[0] = (unsigned char)(0xf0 | (cp >> 18));
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

enum mp_status mp_encode_status(int result, int64_t text, int64_t bad) {
    if (result == MP_ENCODE_NO_MEMORY)
        return text < 0 ? mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory while encoding a text")
                        : mp_error(MP_STATUS_OUT_OF_MEMORY, "out of memory while encoding text %lld", (long long)text);
    if (result != MP_ENCODE_BAD_UTF8) return MP_STATUS_OK;
    if (text < 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text is not valid UTF-8 at byte %lld", (long long)bad);
    if (bad < 0) return mp_error(MP_STATUS_INVALID_ARGUMENT, "text %lld has a negative size", (long long)text);
    return mp_error(MP_STATUS_INVALID_ARGUMENT, "text %lld is not valid UTF-8 at byte %lld", (long long)text,
                    (long long)bad);
}
