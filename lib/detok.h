/*
 * detok.h - the streaming detokenizer behind kiln_detokenizer_*: tokens go
 * in one at a time, only complete UTF-8 comes out. A multi-byte character
 * split across tokens (byte tokens, byte-level BPE pieces) is held back
 * until it completes; ill-formed bytes come out as U+FFFD (one per maximal
 * ill-formed subpart, as Unicode recommends).
 *
 * Pieces are those of kiln_vocab_token_to_piece with the same flags (the
 * SPM leading space is not removed: a stream continues a prompt).
 *
 * Ownership: the detokenizer borrows the vocab (the caller keeps it alive)
 * and owns nothing else; free it with kiln_detok_free. Not thread-safe: one
 * detokenizer per stream. Statuses: KILN_E_INVALID_ARG, KILN_E_OOM_HOST,
 * KILN_E_BUFFER_TOO_SMALL (size protocol; the state is unchanged).
 */
#ifndef KILN_DETOK_H
#define KILN_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"
#include "vocab.h"

typedef struct kiln_detok kiln_detok;

/* flags: KILN_DETOK_*. */
kiln_status kiln_detok_create_vocab(const kiln_vocab *v, uint32_t flags, kiln_detok **out);
void kiln_detok_free(kiln_detok *d); /* NULL-safe */

/* Writes the text completed by token to buf. buf == NULL: *n_out = the size
 * it would write, nothing changes. Too small: KILN_E_BUFFER_TOO_SMALL with
 * the size in *n_out, nothing changes. The state advances only on KILN_OK
 * with buf != NULL. KILN_E_INVALID_ARG for an out-of-range token. */
kiln_status kiln_detok_push(kiln_detok *d, int32_t token, char *buf, size_t capacity,
                            size_t *n_out);
/* Writes what is held back (an incomplete sequence becomes U+FFFD) and
 * resets the stream; same size protocol. */
kiln_status kiln_detok_flush(kiln_detok *d, char *buf, size_t capacity, size_t *n_out);

#endif /* KILN_DETOK_H */
