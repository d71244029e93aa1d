/*
 * sync.glsl - dependent dispatches of a recorded step ordered by counters
 * instead of pipeline barriers (KILN_VK_SYNC, vk_ops.c hazard_barrier).
 *
 * On NVIDIA's driver a pipeline barrier between two dependent dispatches
 * costs the first one's drain, a flush and the second one's ramp (~11 us
 * each in a 7B decode step, bench/NOTES.md session 10). Where every
 * dispatch since the last barrier includes this file, the host records no
 * barrier: each workgroup of the next dispatch waits, first thing, until
 * the counter of those dispatches holds all their workgroups, and each
 * workgroup adds itself to its own dispatch's counter when it is done.
 * So a dispatch starts its work only after everything recorded before
 * its segment has finished, as after a barrier, while its workgroups are
 * already resident.
 *
 * Workgroups are started in dispatch order (every workgroup of a dispatch
 * before any of the next one's), so a waiting workgroup never holds a slot
 * that one it waits for still needs. A wait that does not end within
 * KILN_SYNC_SPIN^2 polls (about a second on a GPU) gives up and sets word 0 (the
 * host then turns the mode off and records barriers again).
 *
 * Every shader that includes it (before its push constants): they end with
 * KILN_SYNC_PC (the last 12 bytes of the 128-byte range; the host pushes
 * them with every dispatch: zeros without the mode), its main() is named
 * kiln_main() and KILN_SYNC_MAIN follows it. (attention.comp gets the
 * declarations through attn_io.glsl but keeps its own main(): it is not
 * one of the pipelines vk_ops.c sync_capable lists, so it never waits.)
 */
#ifndef KILN_SYNC_GLSL
#define KILN_SYNC_GLSL

/* word 0: a wait gave up; word s > 0: workgroups done in segment s */
layout(binding = 10) coherent volatile buffer KSB { uint KSYNC[]; };

/* What a workgroup may do before it waits (the including shader defines
 * it before including this file): work that reads nothing the segment
 * writes, e.g. touching its first weights (mmv.glsl) */
#ifndef KILN_SYNC_BEFORE_WAIT
#define KILN_SYNC_BEFORE_WAIT
#endif

#define KILN_SYNC_PC layout(offset = 116) uint sync_wait; uint sync_target; uint sync_sig;
/* polls: KILN_SYNC_SPIN squared (two loops: lavapipe's compiler ends any
 * one loop after 65535 turns) */
#define KILN_SYNC_SPIN 1024u

/* after kiln_main(): the wait before it and the count after it */
#define KILN_SYNC_MAIN                                                           \
    void main() {                                                                \
        if (p.sync_target != 0u) { /* the same for the whole dispatch */        \
            KILN_SYNC_BEFORE_WAIT                                                \
            if (gl_LocalInvocationIndex == 0u) {                                 \
                bool ks_done = false;                                            \
                for (uint ks_o = 0u; ks_o < KILN_SYNC_SPIN && !ks_done; ks_o++)  \
                    for (uint ks_i = 0u; ks_i < KILN_SYNC_SPIN && !ks_done; ks_i++) \
                        ks_done = KSYNC[p.sync_wait] >= p.sync_target;           \
                if (!ks_done) atomicOr(KSYNC[0], 1u);                            \
            }                                                                    \
            barrier();                                                           \
            memoryBarrierBuffer(); /* what the segment wrote, for every invocation */ \
        }                                                                        \
        kiln_main();                                                             \
        if (p.sync_sig != 0u) {                                                  \
            memoryBarrierBuffer(); /* this invocation's writes before the count */ \
            barrier();                                                           \
            if (gl_LocalInvocationIndex == 0u) atomicAdd(KSYNC[p.sync_sig], 1u); \
        }                                                                        \
    }

#endif
