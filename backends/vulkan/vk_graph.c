/*
 * vk_graph.c - the iface's graph_begin/graph_end for the Vulkan backend: a
 * decode step is recorded once per key into its own command buffer and
 * resubmitted on later steps.
 *
 * Recording (no graph under the key): the operations record their
 * dispatches into the graph's command buffer instead of the handle's;
 * graph_end submits it (its first execution). Replaying: the operations
 * only check their arguments and stage their host inputs; graph_end
 * submits the recorded buffer again. Every dispatch adds its pipeline,
 * bindings (VkBuffer, range), push constants and group counts to a hash;
 * a replay whose hash differs from the recording's did not describe the
 * same commands: the graph is forgotten and *redo asks the caller to issue
 * the operations again, eagerly.
 *
 * Host inputs (token ids, ubatch tables, the rope table) go, while a graph
 * is open, into the graph's own host-visible stage buffer instead of the
 * handle's ring, in the order the operations ask for them: the same
 * offsets at every replay (the offsets are part of the hashed bindings),
 * so the recorded commands read the new values.
 *
 * Recordings reference VkBuffers and the handle's activation scratch:
 * they are all forgotten when any chunk of the shared device is destroyed
 * (purge, trim, freed buffers: sh->mem_gen), when the scratch is
 * reallocated (dev->act_gen), on pool purge and cap changes. Profiling
 * (KILN_VK_PROFILE) times every dispatch alone: graphs are then left open
 * but not used (the operations execute as they come).
 */
#include <string.h>

#include "vk_internal.h"
#include "hash64.h"

#define KILN_VK_STAGE_BYTES (1u << 20)

void kiln_vk_graph_hash(kiln_bk_device *dev, const void *p, size_t n) {
    dev->graph_hash = kiln_hash64(dev->graph_hash, p, n);
}

static uint64_t mem_gen(const kiln_vk_shared *sh) { return __atomic_load_n(&sh->mem_gen, __ATOMIC_ACQUIRE); }

static void graph_free(kiln_bk_device *dev, kiln_vk_graph *g) {
    if (g->cmd) vkFreeCommandBuffers(dev->sh->device, dev->cmd_pool, 1, &g->cmd);
    if (g->ts_pool) vkDestroyQueryPool(dev->sh->device, g->ts_pool, NULL);
    kiln_free(g->ts_which);
    kiln_vk_buffer_free(g->stage);
    memset(g, 0, sizeof *g);
}

void kiln_vk_graphs_forget(kiln_bk_device *dev) {
    if (!dev) return;
    if (dev->graph_mode == 1 || dev->graph_mode == 2) dev->graph_failed = true;
    /* recorded work may still run: its buffers go only after it is done */
    if (dev->n_graphs) (void)kiln_vk_finish(dev);
    for (int i = 0; i < dev->n_graphs; i++) graph_free(dev, &dev->graphs[i]);
    dev->n_graphs = 0;
    dev->graph_cur = -1;
}

void kiln_vk_graphs_close(kiln_bk_device *dev) {
    kiln_vk_graphs_forget(dev);
    graph_free(dev, &dev->graph_new);
    kiln_free(dev->stage_scratch);
    dev->stage_scratch = NULL;
    dev->stage_scratch_cap = 0;
}

kiln_status kiln_vk_graph_stage(kiln_bk_device *dev, uint64_t size, kiln_vk_slice *out) {
    const uint64_t a = dev->sh->align;
    uint64_t need = (size + a - 1) / a * a;
    if (need == 0) need = a;
    kiln_vk_graph *g = dev->graph_mode == 1 ? &dev->graph_new : dev->graph_cur >= 0 ? &dev->graphs[dev->graph_cur] : NULL;
    if (g && g->stage && dev->stage_used + need <= g->stage->size) {
        out->buf = g->stage;
        out->offset = dev->stage_used;
        out->ptr = g->stage->chunk->map + g->stage->blk->offset + dev->stage_used;
        dev->stage_used += need;
        return KILN_OK;
    }
    /* no room: this step cannot be a graph; the operation writes into a
     * host scratch (its dispatch is not recorded) and graph_end asks for
     * the operations again */
    dev->graph_failed = true;
    if (dev->stage_scratch_cap < need) {
        uint8_t *p = kiln_realloc(dev->stage_scratch, need);
        if (!p) return kiln_error(KILN_E_OOM_HOST, "vulkan backend: out of host memory staging %llu bytes",
                                  (unsigned long long)need);
        dev->stage_scratch = p;
        dev->stage_scratch_cap = need;
    }
    out->buf = g && g->stage ? g->stage : dev->ring;
    out->offset = 0;
    out->ptr = dev->stage_scratch;
    return KILN_OK;
}

/* KILN_VK_TIMESTAMPS: after a replay, waits for it and adds its
 * dispatches' times (consecutive timestamps) to the handle's totals. */
static kiln_status timestamps_collect(kiln_bk_device *dev, const kiln_vk_graph *g) {
    if (!g->ts_pool || g->ts_n == 0) return KILN_OK;
    kiln_status st = kiln_vk_finish(dev);
    if (st != KILN_OK) return st;
    uint64_t *t = kiln_malloc(((size_t)g->ts_n + 1) * sizeof *t);
    if (!t) return KILN_OK;
    if (vkGetQueryPoolResults(dev->sh->device, g->ts_pool, 0, g->ts_n + 1, ((size_t)g->ts_n + 1) * sizeof *t, t,
                              sizeof *t, VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) == VK_SUCCESS) {
        const uint64_t mask = dev->sh->timestamp_bits >= 64 ? ~0ull : (1ull << dev->sh->timestamp_bits) - 1;
        const double ms_per_tick = dev->sh->timestamp_period * 1e-6;
        for (uint32_t i = 0; i < g->ts_n; i++) {
            const double ms = (double)((t[i + 1] - t[i]) & mask) * ms_per_tick;
            dev->ts_ms[g->ts_which[i]] += ms;
            dev->ts_calls[g->ts_which[i]]++;
        }
        dev->ts_step_ms += (double)((t[g->ts_n] - t[0]) & mask) * ms_per_tick;
        dev->ts_steps++;
        if (dev->ts_at_ms) {
            if (dev->ts_at_n != g->ts_n || memcmp(dev->ts_at_which, g->ts_which, g->ts_n * sizeof *g->ts_which)) {
                memcpy(dev->ts_at_which, g->ts_which, g->ts_n * sizeof *g->ts_which);
                memset(dev->ts_at_ms, 0, KILN_VK_TS_MAX * sizeof *dev->ts_at_ms);
                dev->ts_at_n = g->ts_n;
                dev->ts_at_steps = 0;
            }
            for (uint32_t i = 0; i < g->ts_n; i++) dev->ts_at_ms[i] += (double)((t[i + 1] - t[i]) & mask) * ms_per_tick;
            dev->ts_at_steps++;
        }
    }
    kiln_free(t);
    return KILN_OK;
}

static kiln_status submit(kiln_bk_device *dev, VkCommandBuffer cmd) {
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cmd;
    pthread_mutex_lock(&dev->sh->queue_lock);
    VkResult r = vkQueueSubmit(dev->sh->queue, 1, &si, dev->fence);
    pthread_mutex_unlock(&dev->sh->queue_lock);
    if (r != VK_SUCCESS) return kiln_vk_result(r, "submitting a recorded decode step");
    dev->pending = true;
    return KILN_OK;
}

kiln_status kiln_vk_graph_begin(kiln_bk_device *dev, uint64_t key) {
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: graph_begin: device is NULL");
    if (dev->graph_mode) return kiln_error(KILN_E_INTERNAL, "vulkan backend: graph_begin inside a graph");
    /* earlier work first: the stage buffers of the last launch are free,
     * and nothing recorded before the graph runs after it */
    kiln_status st = kiln_vk_finish(dev);
    if (st != KILN_OK) return st;
    dev->act_cache.valid = false;   /* record and replay start from the same state */
    dev->graph_failed = false;
    dev->graph_key = key;
    dev->stage_used = 0;
    dev->graph_cur = -1;
    if (dev->profile) {
        dev->graph_mode = 3;
        return KILN_OK;
    }
    if (mem_gen(dev->sh) != dev->graph_mem_gen || dev->act_gen != dev->graph_act_gen) {
        kiln_vk_graphs_forget(dev);
        dev->graph_mem_gen = mem_gen(dev->sh);
        dev->graph_act_gen = dev->act_gen;
    }
    dev->ring_epoch++; /* the ubatch and rope tables are staged afresh */
    const kiln_vk_ubatch *ub = &dev->ub;
    uint32_t shape[7] = {ub->n_tokens, ub->n_block_entries, ub->block_size, ub->n_cells, ub->set, ub->has_kv_cell,
                         ub->has_attn};
    dev->graph_hash = kiln_hash64(kiln_hash64(0xcbf29ce484222325ull, &key, sizeof key), shape, sizeof shape);
    for (int i = 0; i < dev->n_graphs; i++)
        if (dev->graphs[i].key == key) {
            dev->graph_cur = i;
            dev->graph_mode = 2;
            dev->n_graph_replays++;
            return KILN_OK;
        }
    /* a new recording: its command buffer and stage; if they cannot be
     * had, this step runs eagerly (graphs are an optimisation) */
    kiln_vk_graph *g = &dev->graph_new;
    graph_free(dev, g);
    g->key = key;
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ai.commandPool = dev->cmd_pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    VkResult r = vkAllocateCommandBuffers(dev->sh->device, &ai, &g->cmd);
    if (r != VK_SUCCESS) g->cmd = VK_NULL_HANDLE;
    /* KILN_VK_STAGE_NEAR=1: the stage in device memory the host maps (a
     * BAR) where the device has it. Every replay's kernels read these
     * tables (block tables, rope table, ids); on the H100 that took 0.05-0.1
     * ms of GPU time off a 7B decode step, but the step's wall time grew by
     * ~0.4 ms (the host's staging into that memory), so system memory stays
     * the default (bench/NOTES.md, session 8) */
    kiln_status sst = KILN_E_UNSUPPORTED;
    if (r == VK_SUCCESS && dev->stage_near) sst = kiln_vk_buffer_new(dev, KILN_VK_MEM_HOST_NEAR, KILN_VK_STAGE_BYTES, &g->stage);
    if (r == VK_SUCCESS && sst != KILN_OK) sst = kiln_vk_buffer_new(dev, KILN_VK_MEM_HOST, KILN_VK_STAGE_BYTES, &g->stage);
    if (r != VK_SUCCESS || sst != KILN_OK) {
        graph_free(dev, g);
        dev->graph_mode = 3;
        return KILN_OK;
    }
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    r = vkBeginCommandBuffer(g->cmd, &bi);
    if (r != VK_SUCCESS) {
        graph_free(dev, g);
        dev->graph_mode = 3;
        return KILN_OK;
    }
    /* orders the step after earlier submissions; host writes (the stage) visible */
    kiln_vk_barrier_cmd(g->cmd);
    if (dev->timestamps) { /* profiling only: without the pool the step is not timed */
        VkQueryPoolCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
        qi.queryType = VK_QUERY_TYPE_TIMESTAMP;
        qi.queryCount = KILN_VK_TS_MAX;
        g->ts_which = kiln_calloc(KILN_VK_TS_MAX, sizeof *g->ts_which);
        if (g->ts_which && vkCreateQueryPool(dev->sh->device, &qi, NULL, &g->ts_pool) == VK_SUCCESS) {
            vkCmdResetQueryPool(g->cmd, g->ts_pool, 0, KILN_VK_TS_MAX);
            vkCmdWriteTimestamp(g->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, g->ts_pool, 0);
        } else {
            g->ts_pool = VK_NULL_HANDLE;
        }
    }
    dev->n_pend = 0;
    dev->rec_dispatches = dev->rec_barriers = 0;
    dev->graph_mode = 1;
    return KILN_OK;
}

kiln_status kiln_vk_graph_end(kiln_bk_device *dev, int32_t *redo) {
    int32_t dummy;
    if (!redo) redo = &dummy;
    *redo = 0;
    if (!dev) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: graph_end: device is NULL");
    const int mode = dev->graph_mode;
    dev->graph_mode = 0;
    dev->act_cache.valid = false;
    dev->ring_epoch++; /* the tables staged in the graph are not in the ring */
    if (mode == 0) return kiln_error(KILN_E_INTERNAL, "vulkan backend: graph_end without graph_begin");
    if (mode == 3) return KILN_OK;
    const bool moved = mem_gen(dev->sh) != dev->graph_mem_gen || dev->act_gen != dev->graph_act_gen;
    if (mode == 1) {
        kiln_vk_graph *g = &dev->graph_new;
        VkResult r = vkEndCommandBuffer(g->cmd);
        if (dev->graph_failed || moved || r != VK_SUCCESS) {
            /* nothing recorded ran: the caller issues the operations again */
            graph_free(dev, g);
            dev->n_graph_redos++;
            *redo = 1;
            return KILN_OK;
        }
        g->hash = dev->graph_hash;
        if (dev->rec_dispatches > dev->max_dispatches) {
            dev->max_dispatches = dev->rec_dispatches;
            dev->max_barriers = dev->rec_barriers;
        }
        if (dev->n_graphs == KILN_VK_MAX_GRAPHS) { /* the oldest goes */
            graph_free(dev, &dev->graphs[0]);
            memmove(dev->graphs, dev->graphs + 1, sizeof dev->graphs[0] * (KILN_VK_MAX_GRAPHS - 1));
            dev->n_graphs--;
        }
        dev->graphs[dev->n_graphs] = *g;
        memset(g, 0, sizeof *g);
        dev->n_graph_records++;
        kiln_status st = submit(dev, dev->graphs[dev->n_graphs++].cmd);
        if (st != KILN_OK) kiln_vk_graphs_forget(dev);
        return st;
    }
    const int i = dev->graph_cur;
    dev->graph_cur = -1;
    if (i < 0 || dev->graph_failed || moved || dev->graphs[i].hash != dev->graph_hash) {
        if (i >= 0) {
            graph_free(dev, &dev->graphs[i]);
            dev->graphs[i] = dev->graphs[--dev->n_graphs];
        }
        dev->n_graph_redos++;
        *redo = 1;
        return KILN_OK;
    }
    kiln_status st = submit(dev, dev->graphs[i].cmd);
    if (st != KILN_OK) kiln_vk_graphs_forget(dev);
    else if (dev->timestamps) st = timestamps_collect(dev, &dev->graphs[i]);
    return st;
}
