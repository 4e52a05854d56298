/* The gate's shape key, as a C function two extensions share: _shape.c
 * (pgjit.policy.gate.shape_key) and the relay core's audit tracker
 * (pgjit/gateway/_relaycore.c, which looks fingerprints up by it).
 *
 * Same contract as the Python reference, pgjit.policy.gate._shape_key_py
 * (property-tested against pglast's fingerprint, and the C against the
 * reference): the statement with its string and numeric literals replaced by
 * "?", or nothing when the text is outside the restricted alphabet where that
 * replacement is known to be exact. The literal rules are those of the
 * reference's regular expression, applied left to right as re.sub does:
 *
 *   a string:  a quote not preceded by [A-Za-z0-9_], up to the next quote;
 *   a number:  digits not preceded by [A-Za-z0-9_.], optionally "." and
 *              digits, and then not followed by [A-Za-z0-9_.].
 */
#ifndef PGJIT_SHAPE_H
#define PGJIT_SHAPE_H

#include <string.h>
#include <sys/types.h>

static inline int
shape_is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static inline int
shape_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The shape key of b[0:n] into o (room for n bytes: the key is never
 * longer than the text); its length, or -1 when the text has none. */
static ssize_t
shape_into(const unsigned char *b, ssize_t n, unsigned char *o)
{
    for (ssize_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (c >= 0x80 || c == '"' || c == '\\' || c == '$' || c == '?' ||
            (c == '-' && i + 1 < n && b[i + 1] == '-') || (c == '/' && i + 1 < n && b[i + 1] == '*'))
            return -1;
    }
    ssize_t k = 0, i = 0;
    while (i < n) {
        unsigned char c = b[i];
        int after_word = i > 0 && shape_is_word(b[i - 1]);
        if (c == '\'' && !after_word) {
            const unsigned char *close = memchr(b + i + 1, '\'', (size_t)(n - i - 1));
            if (close != NULL) {
                o[k++] = '?';
                i = (close - b) + 1;
                continue;
            }
        } else if (shape_is_digit(c) && !after_word && !(i > 0 && b[i - 1] == '.')) {
            ssize_t e = i;
            while (e < n && shape_is_digit(b[e]))
                e++;
            if (e + 1 < n && b[e] == '.' && shape_is_digit(b[e + 1])) {
                e++;
                while (e < n && shape_is_digit(b[e]))
                    e++;
            }
            if (e == n || !(shape_is_word(b[e]) || b[e] == '.')) {
                o[k++] = '?';
                i = e;
                continue;
            }
        }
        o[k++] = c;
        i++;
    }
    /* A quote left over is a string the rules did not take (a prefix, an odd
     * quote); "??" is two literals touching ('a''b', 1'x'). */
    for (ssize_t j = 0; j < k; j++)
        if (o[j] == '\'' || (o[j] == '?' && j + 1 < k && o[j + 1] == '?'))
            return -1;
    return k;
}

#endif
