/*
 * draft.h - the core's side of a draft (speculative decoding, lib/draft.c).
 *
 * A kiln_draft belongs to its target context: the target keeps a pointer to
 * it (kiln_context.draft, not owned) and calls kiln_draft_detach() when it
 * is freed first, which frees the draft's own context (and so its device
 * memory and its draft-model reference) and leaves a shell that only
 * kiln_draft_free() releases.
 */
#ifndef KILN_DRAFT_H
#define KILN_DRAFT_H

#include "kiln.h"

/* Called by kiln_context_free on the target: frees everything the draft
 * holds except the kiln_draft itself and forgets the target. Never fails. */
void kiln_draft_detach(kiln_draft *d);

/* Called by kiln_context_suspend on the target: suspends the draft's own
 * context at the same level (kiln_decode resumes it when the draft is used
 * again). Statuses of kiln_context_suspend. */
kiln_status kiln_draft_suspend(kiln_draft *d, int32_t level);

/* The draft's own context (NULL once detached), for tests. */
kiln_context *kiln_draft_context(kiln_draft *d);

#endif
