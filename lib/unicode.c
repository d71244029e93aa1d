/*
 * unicode.c - code point flags, UTF-8 decoding/encoding and the GPT-2
 * byte-level alphabet (see unicode.h). The tables live in the generated
 * unicode_data.c.
 */
#include "unicode.h"

uint16_t kiln_ucd_flags(uint32_t cp) {
    if (cp < 256) return kiln_ucd_latin1[cp];
    if (cp > 0x10FFFF) return KILN_UCD_UNDEFINED;
    /* Last run whose start is <= cp. */
    size_t lo = 0, hi = kiln_ucd_runs_count;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (kiln_ucd_runs[mid].start <= cp) lo = mid;
        else hi = mid;
    }
    return kiln_ucd_runs[lo].flags;
}

bool kiln_ucd_in_spans(const kiln_ucd_span *spans, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < spans[mid].lo) hi = mid;
        else if (cp > spans[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

size_t kiln_utf8_lead_len(uint8_t lead) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[lead >> 4];
}

static bool is_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

uint32_t kiln_utf8_next_lenient(const char *str, size_t n, size_t *pos) {
    const uint8_t *s = (const uint8_t *)str + *pos;
    size_t left = n - *pos;
    uint8_t b = s[0];
    if (b < 0x80) {
        *pos += 1;
        return b;
    }
    /* The forms llama.cpp accepts: a lead byte and the right number of
     * continuation bytes, whatever the value (overlong, surrogate). */
    if ((b & 0xE0) == 0xC0 && left >= 2 && is_cont(s[1])) {
        *pos += 2;
        return ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if ((b & 0xF0) == 0xE0 && left >= 3 && is_cont(s[1]) && is_cont(s[2])) {
        *pos += 3;
        return ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    if ((b & 0xF8) == 0xF0 && left >= 4 && is_cont(s[1]) && is_cont(s[2]) && is_cont(s[3])) {
        uint32_t cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                      ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
        /* llama.cpp would decode these and then throw when re-encoding
         * them; treating them as invalid bytes is the safe reading. */
        if (cp <= 0x10FFFF) {
            *pos += 4;
            return cp;
        }
    }
    *pos += 1;
    return KILN_UTF8_REPLACEMENT;
}

size_t kiln_utf8_put(uint32_t cp, char *out) {
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | ((cp >> 18) & 0x07));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

int kiln_utf8_check(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    if (b < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0;      /* no overlongs */
        else if (b == 0xED) hi = 0x9F; /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90;      /* no overlongs */
        else if (b == 0xF4) hi = 0x8F; /* nothing past U+10FFFF */
    } else {
        return -1; /* continuation byte, C0/C1, F5..FF */
    }
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return 0;
        uint8_t c = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (c < l || c > h) return -i;
    }
    return need + 1;
}

uint32_t kiln_bytelevel_cp(uint8_t b) {
    /* Printable bytes stand for themselves; the 68 others (00..20, 7F..A0,
     * AD) are numbered from U+0100 in byte order. */
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    if (b <= 0x20) return 0x100u + b;
    if (b <= 0xA0) return 0x100u + 33 + (b - 0x7Fu);
    return 0x100u + 67; /* 0xAD */
}

int kiln_bytelevel_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp <= 0x120) return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142) return (int)(0x7F + (cp - 0x121));
    if (cp == 0x143) return 0xAD;
    return -1;
}
