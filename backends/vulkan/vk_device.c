/*
 * vk_device.c - the Vulkan instance, device enumeration, the VkDevice shared
 * by every handle of one physical device, device handles, command
 * recording and submission, the staging ring, and transfers.
 *
 * Enumeration (device_count, device_info) creates the process's VkInstance
 * (once) and lists the physical devices: no VkDevice is created and nothing
 * is allocated on any device. device_open() creates the VkDevice of
 * that one device (or joins the one its other handles share).
 *
 * Device order: discrete GPUs first, then integrated, virtual, CPU
 * (lavapipe), others; stable within a kind. Only devices with a compute
 * queue and VK_KHR_push_descriptor are listed.
 *
 * Submission: each handle records operations into one command buffer,
 * with a full memory barrier after each command, and submits it when the
 * caller synchronizes or downloads, or when the staging ring is full. The
 * handles of a device share its one queue (under a lock); every command
 * buffer starts with a barrier, so work a handle submits is ordered after
 * everything submitted before it on any handle.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk_internal.h"

#define KILN_VK_RING_MIN (4ull << 20)     /* default staging ring */
#define KILN_VK_XFER_CHUNK (16ull << 20)  /* transfers go through the ring in pieces of this */
#define KILN_VK_POOL_DEFAULT_CAP (256ull << 20)

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
/* The process's one VkInstance, created on first use and kept for the life
 * of the process, like the plugin itself (the core never unloads it):
 * creating an instance loads every installed Vulkan driver, which takes
 * hundreds of milliseconds, and an instance holds nothing on any device. */
static VkInstance g_instance = VK_NULL_HANDLE;
static kiln_vk_shared *g_shared;

static kiln_status instance_create(VkInstance *out) {
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "kiln";
    app.pEngineName = "kiln";
    app.apiVersion = VK_API_VERSION_1_2;
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ci.pApplicationInfo = &app;
    VkResult r = vkCreateInstance(&ci, NULL, out);
    if (r != VK_SUCCESS) {
        *out = VK_NULL_HANDLE;
        if (r == VK_ERROR_INCOMPATIBLE_DRIVER)
            return kiln_error(KILN_E_NOT_FOUND, "vulkan: no Vulkan 1.2 driver (vkCreateInstance: incompatible driver)");
        return kiln_vk_result(r, "vkCreateInstance");
    }
    return KILN_OK;
}

/* The process instance; call with g_lock held. */
static kiln_status instance_get(VkInstance *out) {
    kiln_status st = KILN_OK;
    if (g_instance == VK_NULL_HANDLE) st = instance_create(&g_instance);
    *out = g_instance;
    return st;
}

static int kind_rank(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 3;
    default: return 4;
    }
}

/* Queue family with compute, or UINT32_MAX. */
static uint32_t compute_family(VkPhysicalDevice pd) {
    VkQueueFamilyProperties fam[32];
    uint32_t n = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, fam);
    for (uint32_t i = 0; i < n; i++)
        if (fam[i].queueFlags & VK_QUEUE_COMPUTE_BIT) return i;
    return UINT32_MAX;
}

static bool has_device_ext(VkPhysicalDevice pd, const char *name) {
    uint32_t n = 0;
    if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL) != VK_SUCCESS || n == 0) return false;
    VkExtensionProperties *e = kiln_malloc((size_t)n * sizeof *e);
    if (!e) return false;
    bool found = false;
    if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, e) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !found; i++) found = strcmp(e[i].extensionName, name) == 0;
    kiln_free(e);
    return found;
}

static bool usable(VkPhysicalDevice pd) {
    VkPhysicalDeviceProperties pr;
    vkGetPhysicalDeviceProperties(pd, &pr);
    return pr.apiVersion >= VK_API_VERSION_1_2 && compute_family(pd) != UINT32_MAX &&
           has_device_ext(pd, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
}

#define KILN_VK_MAX_DEVICES 16

/* The usable physical devices of `inst`, in kiln's order. */
static kiln_status list_devices(VkInstance inst, VkPhysicalDevice *out, uint32_t *n_out) {
    VkPhysicalDevice all[KILN_VK_MAX_DEVICES];
    uint32_t n = KILN_VK_MAX_DEVICES;
    VkResult r = vkEnumeratePhysicalDevices(inst, &n, all);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) return kiln_vk_result(r, "vkEnumeratePhysicalDevices");
    uint32_t k = 0;
    for (int rank = 0; rank <= 4; rank++)
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties pr;
            vkGetPhysicalDeviceProperties(all[i], &pr);
            if (kind_rank(pr.deviceType) == rank && usable(all[i])) out[k++] = all[i];
        }
    *n_out = k;
    return KILN_OK;
}

int32_t kiln_vk_device_count(void) {
    pthread_mutex_lock(&g_lock);
    VkInstance inst;
    VkPhysicalDevice pd[KILN_VK_MAX_DEVICES];
    uint32_t n = 0;
    if (instance_get(&inst) != KILN_OK || list_devices(inst, pd, &n) != KILN_OK) n = 0;
    pthread_mutex_unlock(&g_lock);
    return (int32_t)n;
}

/* Total and free device-local memory (VK_EXT_memory_budget where present). */
static void memory_figures(VkPhysicalDevice pd, uint64_t *total, uint64_t *free_) {
    VkPhysicalDeviceMemoryBudgetPropertiesEXT budget = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
    VkPhysicalDeviceMemoryProperties2 mp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2};
    bool has_budget = has_device_ext(pd, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME);
    if (has_budget) mp.pNext = &budget;
    vkGetPhysicalDeviceMemoryProperties2(pd, &mp);
    *total = *free_ = 0;
    for (uint32_t h = 0; h < mp.memoryProperties.memoryHeapCount; h++) {
        if (!(mp.memoryProperties.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)) continue;
        *total += mp.memoryProperties.memoryHeaps[h].size;
        if (has_budget && budget.heapBudget[h] > budget.heapUsage[h])
            *free_ += budget.heapBudget[h] - budget.heapUsage[h];
    }
}

kiln_status kiln_vk_device_info(int32_t index, kiln_bk_device_info *info) {
    if (!info || info->struct_size < sizeof(uint32_t))
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: device_info needs an info struct");
    pthread_mutex_lock(&g_lock);
    VkInstance inst;
    VkPhysicalDevice pd[KILN_VK_MAX_DEVICES];
    uint32_t n = 0;
    kiln_status st = instance_get(&inst);
    if (st == KILN_OK) st = list_devices(inst, pd, &n);
    if (st == KILN_OK && (index < 0 || (uint32_t)index >= n))
        st = kiln_error(KILN_E_NOT_FOUND, "vulkan backend: no device %d (%u devices)", index, n);
    kiln_bk_device_info d;
    memset(&d, 0, sizeof d);
    if (st == KILN_OK) {
        d.struct_size = sizeof d;
        VkPhysicalDeviceProperties pr;
        vkGetPhysicalDeviceProperties(pd[index], &pr);
        snprintf(d.name, sizeof d.name, "%.127s", pr.deviceName);
        memory_figures(pd[index], &d.mem_total, &d.mem_free);
    }
    pthread_mutex_unlock(&g_lock);
    if (st != KILN_OK) return st;
    uint32_t caller = info->struct_size;
    memcpy(info, &d, caller < sizeof d ? caller : sizeof d);
    info->struct_size = caller;
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* the shared device                                                        */
/* ------------------------------------------------------------------------ */

static void shared_destroy(kiln_vk_shared *sh) {
    if (sh->device) {
        vkDeviceWaitIdle(sh->device);
        kiln_vk_pipelines_destroy(sh);
        kiln_vk_mem_release_all(sh);
        if (sh->layout) vkDestroyPipelineLayout(sh->device, sh->layout, NULL);
        if (sh->dsl) vkDestroyDescriptorSetLayout(sh->device, sh->dsl, NULL);
        vkDestroyDevice(sh->device, NULL);
    }
    pthread_mutex_destroy(&sh->queue_lock);
    pthread_mutex_destroy(&sh->mem_lock);
    pthread_mutex_destroy(&sh->pipe_lock);
    kiln_free(sh);
}

/* Matrix cores for batches (mmc.glsl): VK_NV_cooperative_matrix (our
 * glslc compiles GL_NV_cooperative_matrix, not the KHR extension) with a
 * 16x16x16 F16 x F16 -> F32 subgroup shape, F16 arithmetic and the Vulkan
 * memory model (the shaders' scope semantics), on 32-wide subgroups (the
 * kernel's eight subgroups of a 256-invocation workgroup).
 * KILN_VK_NO_COOPMAT=1 keeps the portable tiled kernel. */
/* Packed 4x8-bit integer dot products in shaders (VK_KHR_shader_integer_dot_product,
 * core in Vulkan 1.3): the Q4_0 decode kernels' byte products in one
 * instruction per four (the *_idot variants). KILN_VK_NO_IDOT=1: not used. */
static bool idot_usable(VkPhysicalDevice pd) {
    if (getenv("KILN_VK_NO_IDOT") || !has_device_ext(pd, VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME)) return false;
    VkPhysicalDeviceShaderIntegerDotProductFeatures idf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    f2.pNext = &idf;
    vkGetPhysicalDeviceFeatures2(pd, &f2);
    return idf.shaderIntegerDotProduct == VK_TRUE;
}

static bool coopmat_usable(VkInstance inst, VkPhysicalDevice pd, uint32_t subgroup_size, uint32_t max_shared,
                           uint32_t mmc_shared) {
    if (getenv("KILN_VK_NO_COOPMAT") || subgroup_size != 32 || max_shared < mmc_shared ||
        !has_device_ext(pd, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME))
        return false;
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cmf = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    f12.pNext = &cmf;
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    f2.pNext = &f12;
    vkGetPhysicalDeviceFeatures2(pd, &f2);
    if (!cmf.cooperativeMatrix || !f12.shaderFloat16 || !f12.vulkanMemoryModel) return false;
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV props =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)vkGetInstanceProcAddr(
            inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
    uint32_t n = 0;
    if (!props || props(pd, &n, NULL) != VK_SUCCESS || n == 0) return false;
    VkCooperativeMatrixPropertiesNV *p = kiln_calloc(n, sizeof *p);
    if (!p) return false;
    for (uint32_t i = 0; i < n; i++) p[i].sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV;
    bool found = false;
    if (props(pd, &n, p) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !found; i++)
            found = p[i].MSize == 16 && p[i].NSize == 16 && p[i].KSize == 16 &&
                    p[i].AType == VK_COMPONENT_TYPE_FLOAT16_NV && p[i].BType == VK_COMPONENT_TYPE_FLOAT16_NV &&
                    p[i].CType == VK_COMPONENT_TYPE_FLOAT32_NV && p[i].DType == VK_COMPONENT_TYPE_FLOAT32_NV &&
                    p[i].scope == VK_SCOPE_SUBGROUP_NV;
    kiln_free(p);
    return found;
}

static kiln_status shared_create(VkInstance inst, int32_t index, kiln_vk_shared **out) {
    VkPhysicalDevice pd[KILN_VK_MAX_DEVICES];
    uint32_t n = 0;
    kiln_status st = list_devices(inst, pd, &n);
    if (st != KILN_OK) return st;
    if (index < 0 || (uint32_t)index >= n)
        return kiln_error(KILN_E_NOT_FOUND, "vulkan backend: no device %d (%u devices)", index, n);
    kiln_vk_shared *sh = kiln_calloc(1, sizeof *sh);
    if (!sh) return kiln_error(KILN_E_OOM_HOST, "vulkan backend: out of memory for a device");
    pthread_mutex_init(&sh->queue_lock, NULL);
    pthread_mutex_init(&sh->mem_lock, NULL);
    pthread_mutex_init(&sh->pipe_lock, NULL);
    sh->index = index;
    sh->phys = pd[index];
    sh->queue_family = compute_family(sh->phys);

    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
    sg.pNext = &m3;
    VkPhysicalDeviceProperties2 pr = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    pr.pNext = &sg;
    vkGetPhysicalDeviceProperties2(sh->phys, &pr);
    const VkPhysicalDeviceLimits *lim = &pr.properties.limits;
    snprintf(sh->name, sizeof sh->name, "%.127s", pr.properties.deviceName);
    sh->keep_open = pr.properties.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU && !getenv("KILN_VK_CLOSE_CPU_DEVICE");
    sh->storage_align = lim->minStorageBufferOffsetAlignment ? lim->minStorageBufferOffsetAlignment : 16;
    sh->align = sh->storage_align > 256 ? sh->storage_align : 256;
    sh->max_range = lim->maxStorageBufferRange;
    sh->max_shared = lim->maxComputeSharedMemorySize;
    sh->max_alloc = m3.maxMemoryAllocationSize ? m3.maxMemoryAllocationSize : (1ull << 31);
    for (int i = 0; i < 3; i++) sh->max_groups[i] = lim->maxComputeWorkGroupCount[i];
    sh->timestamp_period = lim->timestampPeriod;
    {
        const char *mr = getenv("KILN_VK_MMV_ROWS");
        const long rows = mr ? strtol(mr, NULL, 10) : 0;
        sh->mmv_rows = rows >= 1 && rows <= 4 ? (uint32_t)rows : 0u;
    }
    {
        /* attn_dec.glsl's positions per subgroup step, loads issued
         * together (KILN_VK_ATTN_UP: comparisons; the same bits) */
        const char *up = getenv("KILN_VK_ATTN_UP");
        const long upn = up ? strtol(up, NULL, 10) : 0;
        sh->attn_up = upn >= 1 && upn <= 32 ? (uint32_t)upn : KILN_VK_ATTN_UP_DEFAULT;
        /* attn_dec_rope1 (its first positions' K and V loaded before the
         * q/rope prologue) where there are no splits; KILN_VK_ATTN_EARLY=0
         * not (comparisons; the same bits) */
        sh->attn_early = !getenv("KILN_VK_ATTN_EARLY") || atoi(getenv("KILN_VK_ATTN_EARLY")) != 0;
        sh->no_au4 = getenv("KILN_VK_NO_AU4") != NULL;
        /* matmul_swiglu's workgroup (comparisons; the same bits). H100,
         * Mistral-7B Q4_0 tg128 with 128 / 256 / 512 / 1024: 255 / 289 /
         * 305 / 296 (unfused 288-295) */
        const char *sw = getenv("KILN_VK_SWIGLU_WG");
        const long swn = sw ? strtol(sw, NULL, 10) : 512;
        const uint32_t wmax = lim->maxComputeWorkGroupSize[0] < lim->maxComputeWorkGroupInvocations
                                  ? lim->maxComputeWorkGroupSize[0] : lim->maxComputeWorkGroupInvocations;
        sh->swiglu_wg = swn >= 32 && swn <= 1024 && swn % 32 == 0 && (uint32_t)swn <= wmax ? (uint32_t)swn
                        : wmax >= 256 ? 256u : 32u;
        /* the norm-in-the-products kernels' workgroup (KILN_VK_PRENORM_WG,
         * comparisons; the same bits). H100, Mistral-7B Q4_0 tg128 with
         * 128 / 256 / 512 wide: 204.5 / 317.3 / 308.3 */
        const char *pw = getenv("KILN_VK_PRENORM_WG");
        const long pwn = pw ? strtol(pw, NULL, 10) : 256;
        sh->prenorm_wg = pwn >= 32 && pwn <= 1024 && pwn % 32 == 0 && (uint32_t)pwn <= wmax ? (uint32_t)pwn
                         : wmax >= 256 ? 256u : 32u;
    }
    {
        /* mmc.glsl's settings (specialization constants; vk_pipeline.c).
         * KILN_VK_MMC_TILE=BMxBN: its tile (BM a multiple of 64, BN of 32,
         * at most eight subgroups); it and the others below are for
         * comparisons on a device */
        const char *t = getenv("KILN_VK_MMC_TILE");
        unsigned bm = 0, bn = 0;
        if (!t || sscanf(t, "%ux%u", &bm, &bn) != 2 || bm == 0 || bm % 64 || bn == 0 || bn % 32 ||
            (bm / 64) * (bn / 32) > 8)
            bm = bn = 128;
        sh->mmc_bm = bm;
        sh->mmc_bn = bn;
        const char *sk = getenv("KILN_VK_MMC_SKIP");
        sh->mmc_skip = sk ? (uint32_t)strtoul(sk, NULL, 0) & 31u : 0u;
        const char *rv = getenv("KILN_VK_MMC_ROWVEC");
        const unsigned long rvn = rv ? strtoul(rv, NULL, 10) : 5;
        sh->mmc_rowvec = rvn >= 4 && rvn <= 8 ? (uint32_t)rvn : 5u;
        /* two chunks of K per stage in one tile (one latency per 64
         * elements, 36 KiB), the workgroups over the same weight rows side
         * by side: 7-10% on a 7B pp512 (H100, bench/NOTES.md); the previous
         * kernel's settings are KILN_VK_MMC_KC=1 KILN_VK_MMC_STAGES=2
         * KILN_VK_MMC_MFIRST=0 */
        const char *kc = getenv("KILN_VK_MMC_KC");
        sh->mmc_kc = kc && strcmp(kc, "1") == 0 ? 1u : 2u;
        const char *stg = getenv("KILN_VK_MMC_STAGES");
        sh->mmc_stages = stg && strcmp(stg, "2") == 0 ? 2u : 1u;
        if (!getenv("KILN_VK_MMC_ROWVEC")) sh->mmc_rowvec = 4u * sh->mmc_kc + 1u;
        /* mmcw_main.glsl, whose two roles reach the same barriers from
         * different loops: only on NVIDIA's driver (vendor 0x10de), whose
         * barrier counts subgroups, where test_vulkan_ops checks it. By
         * default for float weights only (F16 pp512 on the H100 5177 ->
         * 7068; Q4_0 8144 -> 7179, its four moving subgroups decode what
         * eight did: bench/NOTES.md, session 15); KILN_VK_MMC_WS=1 for
         * every type, =0 for none */
        const char *ws = getenv("KILN_VK_MMC_WS");
        const uint32_t ws_mode = !ws ? 1u : strcmp(ws, "0") == 0 ? 0u : 2u;
        sh->mmc_ws = bm == 128 && bn == 128 && pr.properties.vendorID == 0x10deu ? ws_mode : 0u;
        const char *mf = getenv("KILN_VK_MMC_MFIRST");
        sh->mmc_mfirst = mf && strcmp(mf, "0") == 0 ? 0u : 1u;
    }
    {
        VkQueueFamilyProperties fam[32];
        uint32_t nf = 32;
        vkGetPhysicalDeviceQueueFamilyProperties(sh->phys, &nf, fam);
        sh->timestamp_bits = sh->queue_family < nf && lim->timestampComputeAndGraphics ? fam[sh->queue_family].timestampValidBits : 0;
    }
    const VkSubgroupFeatureFlags need = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_SHUFFLE_BIT;
    sh->subgroup_arith = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) && (sg.supportedOperations & need) == need &&
                         sg.subgroupSize >= 8 && sg.subgroupSize <= 128 && !getenv("KILN_VK_NO_SUBGROUP");
    const VkSubgroupFeatureFlags need_add = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT;
    sh->subgroup_add = sh->subgroup_arith && (sg.supportedOperations & need_add) == need_add;
    sh->subgroup_size = sg.subgroupSize;
    sh->is_cpu = pr.properties.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    qci.queueFamilyIndex = sh->queue_family;
    qci.queueCount = 1;
    qci.pQueuePriorities = &prio;
    const char *exts[4];
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos = &qci;
    dci.ppEnabledExtensionNames = exts;
    VkPhysicalDeviceShaderIntegerDotProductFeatures idf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES};
    idf.shaderIntegerDotProduct = VK_TRUE;
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cmf = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
    cmf.cooperativeMatrix = VK_TRUE;
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    f12.pNext = &cmf;
    f12.shaderFloat16 = VK_TRUE;
    f12.vulkanMemoryModel = VK_TRUE;
    /* mmc.glsl's workgroup: 256 invocations for its usual tile (Vulkan
     * guarantees only 128); its shared memory: each stage of both tiles in
     * rows of mmc_rowvec 16-byte vectors (36 KiB as it is set by default) */
    const uint32_t mmc_wg = 32u * (sh->mmc_bm / 64u) * (sh->mmc_bn / 32u);
    const bool mmc_fits = lim->maxComputeWorkGroupInvocations >= mmc_wg && lim->maxComputeWorkGroupSize[0] >= mmc_wg;
    sh->coopmat = mmc_fits && coopmat_usable(inst, sh->phys, sg.subgroupSize, lim->maxComputeSharedMemorySize,
                                             16u * sh->mmc_stages * sh->mmc_rowvec * (sh->mmc_bm + sh->mmc_bn));
    sh->coopmat_emulate = mmc_fits && !sh->coopmat && getenv("KILN_VK_COOPMAT_EMULATE") && !getenv("KILN_VK_NO_COOPMAT");
    sh->idot = sh->subgroup_add && idot_usable(sh->phys);
    /* KILN_VK_PIPELINE_STATS=1: the driver's statistics of each pipeline
     * built (registers, shared memory, spills) on stderr, where the device
     * offers VK_KHR_pipeline_executable_properties (kernel tuning) */
    VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR pef = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR};
    pef.pipelineExecutableInfo = VK_TRUE;
    sh->pipeline_stats = getenv("KILN_VK_PIPELINE_STATS") &&
                         has_device_ext(sh->phys, VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME);
    if (sh->pipeline_stats) {
        VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR have = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR};
        VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &have};
        vkGetPhysicalDeviceFeatures2(sh->phys, &f2);
        sh->pipeline_stats = have.pipelineExecutableInfo == VK_TRUE;
    }
    /* with what the device offers; failing that without the integer dot
     * products, then without the matrix cores too */
    VkResult r = VK_ERROR_INITIALIZATION_FAILED;
    for (int attempt = 0; attempt < 3 && r != VK_SUCCESS; attempt++) {
        if (attempt == 1 && !sh->idot) continue; /* nothing to drop */
        if (attempt == 2 && !sh->coopmat) break;
        if (attempt >= 1) sh->idot = false;
        if (attempt == 2) sh->coopmat = false;
        uint32_t n_ext = 0;
        void *chain = NULL;
        exts[n_ext++] = VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME;
        if (sh->coopmat) {
            exts[n_ext++] = VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME;
            f12.pNext = &cmf;
            chain = &f12;
        }
        if (sh->idot) {
            exts[n_ext++] = VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME;
            idf.pNext = chain;
            chain = &idf;
        }
        if (sh->pipeline_stats) {
            exts[n_ext++] = VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME;
            pef.pNext = chain;
            chain = &pef;
        }
        dci.enabledExtensionCount = n_ext;
        dci.pNext = chain;
        r = vkCreateDevice(sh->phys, &dci, NULL, &sh->device);
    }
    if (r != VK_SUCCESS) {
        sh->device = VK_NULL_HANDLE;
        st = kiln_vk_result(r, "vkCreateDevice");
        shared_destroy(sh);
        return st;
    }
    vkGetDeviceQueue(sh->device, sh->queue_family, 0, &sh->queue);
    if (sh->pipeline_stats) {
        sh->get_exec_props = (PFN_vkGetPipelineExecutablePropertiesKHR)vkGetDeviceProcAddr(
            sh->device, "vkGetPipelineExecutablePropertiesKHR");
        sh->get_exec_stats = (PFN_vkGetPipelineExecutableStatisticsKHR)vkGetDeviceProcAddr(
            sh->device, "vkGetPipelineExecutableStatisticsKHR");
        sh->pipeline_stats = sh->get_exec_props && sh->get_exec_stats;
    }
    sh->push_descriptor = (PFN_vkCmdPushDescriptorSetKHR)vkGetDeviceProcAddr(sh->device, "vkCmdPushDescriptorSetKHR");
    if (!sh->push_descriptor) {
        shared_destroy(sh);
        return kiln_error(KILN_E_UNSUPPORTED, "vulkan backend: vkCmdPushDescriptorSetKHR missing");
    }
    if ((st = kiln_vk_layout_create(sh)) != KILN_OK) {
        shared_destroy(sh);
        return st;
    }
    *out = sh;
    return KILN_OK;
}

kiln_status kiln_vk_shared_get(int32_t index, kiln_vk_shared **out) {
    pthread_mutex_lock(&g_lock);
    kiln_status st = KILN_OK;
    for (kiln_vk_shared *s = g_shared; s; s = s->next)
        if (s->index == index) {
            s->refs++;
            *out = s;
            goto done;
        }
    VkInstance inst;
    if ((st = instance_get(&inst)) != KILN_OK) goto done;
    kiln_vk_shared *sh = NULL;
    if ((st = shared_create(inst, index, &sh)) != KILN_OK) goto done;
    sh->refs = 1;
    sh->next = g_shared;
    g_shared = sh;
    *out = sh;
done:
    pthread_mutex_unlock(&g_lock);
    return st;
}

void kiln_vk_shared_ref(kiln_vk_shared *sh) {
    pthread_mutex_lock(&g_lock);
    sh->refs++;
    pthread_mutex_unlock(&g_lock);
}

void kiln_vk_shared_put(kiln_vk_shared *sh) {
    if (!sh) return;
    pthread_mutex_lock(&g_lock);
    /* A CPU implementation (lavapipe) stays open once its last handle
     * closes: its "device memory" is host memory, already freed, and a new
     * VkDevice would compile every pipeline again (seconds with LLVM). A
     * GPU's VkDevice goes, so that nothing stays on a GPU nobody uses. */
    if (--sh->refs == 0 && !sh->keep_open) {
        kiln_vk_shared **pp = &g_shared;
        while (*pp && *pp != sh) pp = &(*pp)->next;
        if (*pp) *pp = sh->next;
        shared_destroy(sh);
    }
    pthread_mutex_unlock(&g_lock);
}

/* ------------------------------------------------------------------------ */
/* handles                                                                  */
/* ------------------------------------------------------------------------ */

kiln_status kiln_vk_device_open(int32_t index, const kiln_bk_open_params *params, kiln_bk_device **out) {
    if (!out) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: device_open: out is NULL");
    *out = NULL;
    kiln_bk_open_params p;
    memset(&p, 0, sizeof p);
    p.log_level = KILN_LOG_ERROR;
    if (params) memcpy(&p, params, params->struct_size < sizeof p ? params->struct_size : sizeof p);

    kiln_bk_device *dev = kiln_calloc(1, sizeof *dev);
    if (!dev) return kiln_error(KILN_E_OOM_HOST, "vulkan backend: out of memory for a device handle");
    kiln_logger_init(&dev->log, p.log_fn, p.log_user, p.log_level);
    dev->pool.cap = KILN_VK_POOL_DEFAULT_CAP;
    dev->ring_epoch = 1;
    dev->graph_cur = -1;
    dev->profile = getenv("KILN_VK_PROFILE") != NULL;
    dev->no_tiled = getenv("KILN_VK_NO_TILED") != NULL;
    dev->no_mmv = getenv("KILN_VK_NO_MMV") != NULL;
    dev->mmc_old = getenv("KILN_VK_MMC_OLD") != NULL;
    dev->attn_old = getenv("KILN_VK_ATTN_OLD") != NULL;
    {
        /* decode attention over a long context in splits (attn_dec.glsl,
         * attn_fold.comp): positions per split, 0 never; the context size
         * from which it splits */
        const char *sp = getenv("KILN_VK_ATTN_SPLIT"), *sm = getenv("KILN_VK_ATTN_SPLIT_MIN");
        const long spn = sp ? strtol(sp, NULL, 10) : KILN_VK_ATTN_SPLIT_DEFAULT;
        const long smn = sm ? strtol(sm, NULL, 10) : KILN_VK_ATTN_SPLIT_MIN_DEFAULT;
        dev->attn_split = spn >= 0 && spn <= (1l << 20) ? (uint32_t)spn : KILN_VK_ATTN_SPLIT_DEFAULT;
        dev->attn_split_min = smn >= 0 && smn <= (1l << 30) ? (uint32_t)smn : KILN_VK_ATTN_SPLIT_MIN_DEFAULT;
        /* a row's splits: about 16 by its length, of at least this many
         * positions (KILN_VK_ATTN_SPLIT_SHORT; = KILN_VK_ATTN_SPLIT: always
         * that long, as before) and at most KILN_VK_ATTN_SPLIT */
        const char *ss = getenv("KILN_VK_ATTN_SPLIT_SHORT");
        const long ssn = ss ? strtol(ss, NULL, 10) : KILN_VK_ATTN_SPLIT_SHORT_DEFAULT;
        dev->attn_split_short = ssn >= 32 && ssn <= (1l << 20) && ssn % 32 == 0 ? (uint32_t)ssn
                                : KILN_VK_ATTN_SPLIT_SHORT_DEFAULT;
    }
    dev->attn_dec_old = getenv("KILN_VK_ATTN_DEC_OLD") != NULL;
    dev->attn_fold_apart = getenv("KILN_VK_ATTN_FOLD_APART") != NULL;
    dev->stage_near = getenv("KILN_VK_STAGE_NEAR") != NULL;
    dev->attn_no_mc = getenv("KILN_VK_ATTN_PORTABLE") != NULL;
    dev->attn_eager = getenv("KILN_VK_ATTN_EAGER") != NULL;
    dev->barrier_all = getenv("KILN_VK_BARRIER_ALL") != NULL;
    dev->barrier_full = getenv("KILN_VK_BARRIER_FULL") != NULL;
    {   /* KILN_VK_NO_FUSED=1 (or any non-number): every fusion off; a number
         * > 1: a mask of the ones to turn off (2 the quantization in the
         * producers, 4 matmul_multi, 8 add_rms_norm, 16 rope_kv_store, 32
         * rope_kv_attention's single dispatch, 64 matmul_add_rms_norm's, 128
         * matmul_swiglu's, 1024 the norm in the products after it:
         * prenorm_fused says no).
         * Default: all on. (The quantization in the producers was off by
         * default until add_rms_norm and rms_norm quantized a row with two
         * barriers instead of a tree per 256 elements: on the H100 Q4_0
         * tg128 219 -> 236 with it, F16 129 -> 132, Q4_K_M 133 -> 137.) */
        const char *nf = getenv("KILN_VK_NO_FUSED");
        const long m = nf ? strtol(nf, NULL, 10) : 0;
        dev->no_fused_mask = !nf || !*nf ? 0u : m > 1 ? (uint32_t)m : m == 0 && nf[0] == '0' ? 0u : 0x4feu;
    }
    /* on by default (H100: Q4_0 tg128 229 -> 241, Q4_K_M 136 -> 140); =0 off */
    dev->mmv_unroll = !getenv("KILN_VK_MMV_UNROLL") || atoi(getenv("KILN_VK_MMV_UNROLL")) != 0;
    dev->no_idot8 = getenv("KILN_VK_NO_IDOT8") != NULL;
    dev->multi_kquant = getenv("KILN_VK_MULTI_KQUANT") != NULL;
    /* KILN_VK_LAYOUT=0: weights keep the GGUF layout (vk_layout.c), to compare */
    const char *lay = getenv("KILN_VK_LAYOUT");
    dev->no_weight_layout = lay && strcmp(lay, "0") == 0;
    /* KILN_VK_KQ: 0 no weight in KQ order (comparisons), 2 every split
     * weight (tests: the fused entries' separate forms); default 1 */
    const char *kq = getenv("KILN_VK_KQ");
    const int kqn = kq && *kq ? atoi(kq) : 1;
    dev->kq_mode = kqn == 0 ? 0u : kqn == 2 ? 2u : 1u;
    kiln_status st = kiln_vk_shared_get(index, &dev->sh);
    if (st != KILN_OK) {
        kiln_free(dev);
        return st;
    }
    dev->norm_dbg = getenv("KILN_VK_NORM_DBG") ? (uint32_t)atoi(getenv("KILN_VK_NORM_DBG")) : 0u;
    const char *skip = getenv("KILN_VK_SKIP");
    dev->skip = skip ? (uint32_t)strtoul(skip, NULL, 0) : 0u;
    if (dev->skip)
        kiln_log(&dev->log, KILN_LOG_WARN, "vulkan backend: KILN_VK_SKIP=%u leaves kernels out: results are wrong",
                 dev->skip);
    const char *ts = getenv("KILN_VK_TIMESTAMPS");
    dev->timestamps = ts != NULL && !dev->profile && dev->sh->timestamp_bits > 0;
    if (dev->timestamps && strcmp(ts, "2") == 0) { /* profiling only: without the arrays, per pipeline only */
        dev->ts_at_ms = kiln_calloc(KILN_VK_TS_MAX, sizeof *dev->ts_at_ms);
        dev->ts_at_which = kiln_calloc(KILN_VK_TS_MAX, sizeof *dev->ts_at_which);
        if (!dev->ts_at_ms || !dev->ts_at_which) {
            kiln_free(dev->ts_at_ms);
            kiln_free(dev->ts_at_which);
            dev->ts_at_ms = NULL;
            dev->ts_at_which = NULL;
        }
    }
    VkDevice d = dev->sh->device;
    VkCommandPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pci.queueFamilyIndex = dev->sh->queue_family;
    VkResult r = vkCreateCommandPool(d, &pci, NULL, &dev->cmd_pool);
    if (r == VK_SUCCESS) {
        VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
        ai.commandPool = dev->cmd_pool;
        ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
        ai.commandBufferCount = 1;
        r = vkAllocateCommandBuffers(d, &ai, &dev->cmd);
    }
    if (r == VK_SUCCESS) {
        VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        r = vkCreateFence(d, &fci, NULL, &dev->fence);
    }
    if (r != VK_SUCCESS) {
        st = kiln_vk_result(r, "device_open: command pool, buffer or fence");
        kiln_vk_device_close(dev);
        return st;
    }
    /* the workgroup counters (matmul_add_rms_norm's, attention's): zero
     * before any dispatch counts on them */
    static const uint32_t zeros[KILN_VK_ATTN_CNT_OFF + KILN_VK_ATTN_CNT_N];
    if ((st = kiln_vk_buffer_new(dev, KILN_VK_MEM_DEVICE, sizeof zeros, &dev->wg_cnt)) ||
        (st = kiln_vk_upload(dev, dev->wg_cnt, 0, zeros, sizeof zeros)) || (st = kiln_vk_finish(dev))) {
        kiln_vk_device_close(dev);
        return st;
    }
    kiln_log(&dev->log, KILN_LOG_INFO, "vulkan backend: device %d open: %s%s%s", index, dev->sh->name,
             dev->sh->subgroup_arith ? " (subgroup arithmetic)" : "",
             dev->sh->coopmat ? " (cooperative matrices, NV)" : dev->sh->coopmat_emulate ? " (cooperative matrices emulated)" : "");
    *out = dev;
    return KILN_OK;
}

/* KILN_VK_PROFILE: the time each kernel took on this handle, on stderr. */
static void profile_report(const kiln_bk_device *dev) {
    double total = 0;
    for (int i = 0; i < KILN_VK_P_COUNT; i++) total += dev->prof_ms[i];
    if (total <= 0) return;
    fprintf(stderr, "kiln vulkan profile (handle %p): %.1f ms in kernels\n", (const void *)dev, total);
    for (int i = 0; i < KILN_VK_P_COUNT; i++)
        if (dev->prof_n[i])
            fprintf(stderr, "  %-16s %8llu calls %10.2f ms %8.3f ms/call\n", kiln_vk_pipeline_name(i),
                    (unsigned long long)dev->prof_n[i], dev->prof_ms[i], dev->prof_ms[i] / (double)dev->prof_n[i]);
}

/* KILN_VK_TIMESTAMPS: where a replayed step's GPU time goes. */
static void timestamps_report(const kiln_bk_device *dev) {
    if (!dev->ts_steps) return;
    fprintf(stderr, "kiln vulkan timestamps (handle %p): %llu replayed steps, %.3f ms of GPU time each (first to last "
            "dispatch's end)\n", (const void *)dev, (unsigned long long)dev->ts_steps,
            dev->ts_step_ms / (double)dev->ts_steps);
    for (int i = 0; i < KILN_VK_P_COUNT; i++)
        if (dev->ts_calls[i])
            fprintf(stderr, "  %-16s %6.1f per step %8.3f ms per step %8.2f us each\n", kiln_vk_pipeline_name(i),
                    (double)dev->ts_calls[i] / (double)dev->ts_steps, dev->ts_ms[i] / (double)dev->ts_steps,
                    dev->ts_ms[i] * 1e3 / (double)dev->ts_calls[i]);
    if (!dev->ts_at_steps) return;
    /* the first 24 dispatches (a decode step's first layers) and the last 8 */
    fprintf(stderr, "  by place, over the last %llu replays of a step of %u dispatches:\n",
            (unsigned long long)dev->ts_at_steps, dev->ts_at_n);
    for (uint32_t i = 0; i < dev->ts_at_n; i++)
        if (i < 24 || i + 8 >= dev->ts_at_n)
            fprintf(stderr, "  %4u %-16s %8.2f us\n", i, kiln_vk_pipeline_name(dev->ts_at_which[i]),
                    dev->ts_at_ms[i] * 1e3 / (double)dev->ts_at_steps);
}

void kiln_vk_device_close(kiln_bk_device *dev) {
    if (!dev) return;
    if (dev->profile) profile_report(dev);
    if (dev->timestamps) timestamps_report(dev);
    if ((dev->profile || getenv("KILN_VK_STATS")) && dev->n_graph_records + dev->n_graph_redos)
        fprintf(stderr, "kiln vulkan graphs (handle %p): %llu recorded, %llu replayed, %llu redone\n", (const void *)dev,
                (unsigned long long)dev->n_graph_records, (unsigned long long)dev->n_graph_replays,
                (unsigned long long)dev->n_graph_redos);
    if ((dev->profile || getenv("KILN_VK_STATS")) && dev->max_dispatches)
        fprintf(stderr, "kiln vulkan graphs (handle %p): the largest recorded %u dispatches, %u barriers\n",
                (const void *)dev, dev->max_dispatches, dev->max_barriers);
    if (dev->sh) {
        (void)kiln_vk_finish(dev);
        kiln_vk_graphs_close(dev);
        kiln_vk_pool_close(dev);
        kiln_vk_buffer_free(dev->ring);
        kiln_vk_buffer_free(dev->act);
        kiln_vk_buffer_free(dev->attn_part);
        kiln_vk_buffer_free(dev->wg_cnt);
        VkDevice d = dev->sh->device;
        if (dev->fence) vkDestroyFence(d, dev->fence, NULL);
        if (dev->cmd_pool) vkDestroyCommandPool(d, dev->cmd_pool, NULL); /* frees dev->cmd */
        kiln_vk_shared_put(dev->sh);
    }
    kiln_free(dev->ub.data);
    kiln_free(dev->rope.host);
    kiln_free(dev->ts_at_ms);
    kiln_free(dev->ts_at_which);
    kiln_free(dev);
}

/* ------------------------------------------------------------------------ */
/* recording and submission                                                 */
/* ------------------------------------------------------------------------ */

void kiln_vk_barrier(kiln_bk_device *dev) {
    kiln_vk_barrier_cmd(dev->cmd);
    dev->n_pend = 0;
}

void kiln_vk_barrier_cmd(VkCommandBuffer cmd) {
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT;
    const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    vkCmdPipelineBarrier(cmd, stages | VK_PIPELINE_STAGE_HOST_BIT, stages, 0, 1, &mb, 0, NULL, 0, NULL);
}

/* Between two dispatches: the only writers since the last full barrier
 * are compute shaders (copies and host writes are bracketed by full
 * barriers: record_copy, kiln_vk_begin), so compute-to-compute ordering is
 * all a later dispatch needs; a barrier that also names the transfer and
 * host stages may make a driver drain and flush more than that. */
void kiln_vk_barrier_compute(VkCommandBuffer cmd) {
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT;
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &mb, 0,
                         NULL, 0, NULL);
}

static kiln_status wait_pending(kiln_bk_device *dev) {
    if (!dev->pending) return KILN_OK;
    VkResult r = vkWaitForFences(dev->sh->device, 1, &dev->fence, VK_TRUE, UINT64_MAX);
    dev->pending = false;
    vkResetFences(dev->sh->device, 1, &dev->fence);
    vkResetCommandBuffer(dev->cmd, 0);
    dev->ring_used = 0;
    dev->ring_epoch++;
    return r == VK_SUCCESS ? KILN_OK : kiln_vk_result(r, "vkWaitForFences");
}

kiln_status kiln_vk_begin(kiln_bk_device *dev) {
    /* inside a graph only dispatches are recorded (into the graph): a
     * transfer now would not be part of it */
    if (dev->graph_mode == 1 || dev->graph_mode == 2) dev->graph_failed = true;
    if (dev->recording) return KILN_OK;
    kiln_status st = wait_pending(dev);
    if (st != KILN_OK) return st;
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    VkResult r = vkBeginCommandBuffer(dev->cmd, &bi);
    if (r != VK_SUCCESS) return kiln_vk_result(r, "vkBeginCommandBuffer");
    dev->recording = true;
    dev->n_ops = 0;
    /* orders this buffer after everything submitted before it, and makes
     * host writes to the ring visible */
    kiln_vk_barrier(dev);
    return KILN_OK;
}

kiln_status kiln_vk_finish(kiln_bk_device *dev) {
    kiln_status st = KILN_OK;
    if (dev->recording) {
        dev->recording = false;
        VkResult r = vkEndCommandBuffer(dev->cmd);
        if (r == VK_SUCCESS) {
            VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO};
            si.commandBufferCount = 1;
            si.pCommandBuffers = &dev->cmd;
            pthread_mutex_lock(&dev->sh->queue_lock);
            r = vkQueueSubmit(dev->sh->queue, 1, &si, dev->fence);
            pthread_mutex_unlock(&dev->sh->queue_lock);
        }
        if (r != VK_SUCCESS) {
            vkResetCommandBuffer(dev->cmd, 0);
            dev->ring_used = 0;
            dev->ring_epoch++;
            return kiln_vk_result(r, "submitting recorded work");
        }
        dev->pending = true;
    }
    st = wait_pending(dev);
    if (!dev->pending) {
        dev->ring_used = 0;
        dev->ring_epoch++;
    }
    return st;
}

kiln_status kiln_vk_ring_alloc(kiln_bk_device *dev, uint64_t size, kiln_vk_slice *out) {
    if (dev->graph_mode == 1 || dev->graph_mode == 2) return kiln_vk_graph_stage(dev, size, out);
    const uint64_t a = dev->sh->align;
    uint64_t need = (size + a - 1) / a * a;
    if (need == 0) need = a;
    kiln_status st;
    if (!dev->ring || dev->ring_used + need > dev->ring->size) {
        if ((st = kiln_vk_finish(dev)) != KILN_OK) return st;
        if (!dev->ring || need > dev->ring->size) {
            uint64_t want = need > KILN_VK_RING_MIN ? need : KILN_VK_RING_MIN;
            kiln_bk_buffer *nb = NULL;
            if ((st = kiln_vk_buffer_new(dev, KILN_VK_MEM_HOST, want, &nb)) != KILN_OK) return st;
            kiln_vk_buffer_free(dev->ring);
            dev->ring = nb;
        }
    }
    out->buf = dev->ring;
    out->offset = dev->ring_used;
    out->ptr = dev->ring->chunk->map + dev->ring->blk->offset + dev->ring_used;
    dev->ring_used += need;
    return KILN_OK;
}

/* ------------------------------------------------------------------------ */
/* transfers                                                                */
/* ------------------------------------------------------------------------ */

static bool range_ok(const kiln_bk_buffer *b, uint64_t offset, uint64_t size) {
    return offset <= b->size && size <= b->size - offset;
}

static void record_copy(kiln_bk_device *dev, const kiln_bk_buffer *src, uint64_t so, const kiln_bk_buffer *dst,
                        uint64_t dof, uint64_t n) {
    VkBufferCopy c = {src->blk->offset + so, dst->blk->offset + dof, n};
    if (dev->n_pend) kiln_vk_barrier(dev); /* dispatches recorded since the last barrier */
    vkCmdCopyBuffer(dev->cmd, src->chunk->buf, dst->chunk->buf, 1, &c);
    kiln_vk_barrier(dev);
    dev->n_ops++;
}

kiln_status kiln_vk_upload(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t offset, const void *src,
                           uint64_t size) {
    if (!dev || !dst || (!src && size))
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_upload: NULL device, buffer or source");
    if (!range_ok(dst, offset, size))
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_upload: [%llu, +%llu) outside a %llu-byte buffer",
                          (unsigned long long)offset, (unsigned long long)size, (unsigned long long)dst->size);
    kiln_vk_act_written(dev, dst, offset, size);
    if (dst->chunk->map && size) {
        /* mapped memory: once this handle's work is done, write it directly */
        kiln_status st = kiln_vk_finish(dev);
        if (st != KILN_OK) return st;
        memcpy(dst->chunk->map + dst->blk->offset + offset, src, size);
        return KILN_OK;
    }
    for (uint64_t done = 0; done < size;) {
        uint64_t n = size - done < KILN_VK_XFER_CHUNK ? size - done : KILN_VK_XFER_CHUNK;
        kiln_vk_slice s;
        kiln_status st = kiln_vk_ring_alloc(dev, n, &s);
        if (st == KILN_OK) st = kiln_vk_begin(dev);
        if (st != KILN_OK) return st;
        memcpy(s.ptr, (const uint8_t *)src + done, n);
        record_copy(dev, s.buf, s.offset, dst, offset + done, n);
        done += n;
    }
    return KILN_OK;
}

kiln_status kiln_vk_download(kiln_bk_device *dev, const kiln_bk_buffer *src, uint64_t offset, void *dst,
                             uint64_t size) {
    if (!dev || !src || (!dst && size))
        return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_download: NULL device, buffer or destination");
    if (!range_ok(src, offset, size))
        return kiln_error(KILN_E_INVALID_ARG,
                          "vulkan backend: buffer_download: [%llu, +%llu) outside a %llu-byte buffer",
                          (unsigned long long)offset, (unsigned long long)size, (unsigned long long)src->size);
    if (size == 0) return kiln_vk_finish(dev);
    if (src->chunk->map) {
        kiln_status st = kiln_vk_finish(dev);
        if (st != KILN_OK) return st;
        memcpy(dst, src->chunk->map + src->blk->offset + offset, size);
        return KILN_OK;
    }
    for (uint64_t done = 0; done < size;) {
        uint64_t n = size - done < KILN_VK_XFER_CHUNK ? size - done : KILN_VK_XFER_CHUNK;
        kiln_vk_slice s;
        kiln_status st = kiln_vk_ring_alloc(dev, n, &s);
        if (st == KILN_OK) st = kiln_vk_begin(dev);
        if (st != KILN_OK) return st;
        record_copy(dev, src, offset + done, s.buf, s.offset, n);
        if ((st = kiln_vk_finish(dev)) != KILN_OK) return st;
        memcpy((uint8_t *)dst + done, s.ptr, n);
        done += n;
    }
    return KILN_OK;
}

kiln_status kiln_vk_copy(kiln_bk_device *dev, kiln_bk_buffer *dst, uint64_t dst_offset, const kiln_bk_buffer *src,
                         uint64_t src_offset, uint64_t size) {
    if (!dev || !dst || !src) return kiln_error(KILN_E_INVALID_ARG, "vulkan backend: buffer_copy: NULL argument");
    if (!range_ok(src, src_offset, size) || !range_ok(dst, dst_offset, size))
        return kiln_error(KILN_E_INVALID_ARG,
                          "vulkan backend: buffer_copy: %llu bytes from %llu (of %llu) to %llu (of %llu) out of range",
                          (unsigned long long)size, (unsigned long long)src_offset, (unsigned long long)src->size,
                          (unsigned long long)dst_offset, (unsigned long long)dst->size);
    if (size == 0) return KILN_OK;
    kiln_vk_act_written(dev, dst, dst_offset, size);
    uint64_t s0 = src->blk->offset + src_offset, d0 = dst->blk->offset + dst_offset;
    bool overlap = src->chunk == dst->chunk && s0 < d0 + size && d0 < s0 + size;
    kiln_status st;
    if (!overlap) {
        if ((st = kiln_vk_begin(dev)) != KILN_OK) return st;
        record_copy(dev, src, src_offset, dst, dst_offset, size);
        return KILN_OK;
    }
    /* Vulkan forbids overlapping regions in one copy: go through the ring,
     * piece by piece in the direction that never overwrites unread bytes */
    for (uint64_t done = 0; done < size;) {
        uint64_t n = size - done < KILN_VK_XFER_CHUNK ? size - done : KILN_VK_XFER_CHUNK;
        uint64_t at = d0 > s0 ? size - done - n : done;
        kiln_vk_slice s;
        if ((st = kiln_vk_ring_alloc(dev, n, &s)) != KILN_OK || (st = kiln_vk_begin(dev)) != KILN_OK) return st;
        record_copy(dev, src, src_offset + at, s.buf, s.offset, n);
        record_copy(dev, s.buf, s.offset, dst, dst_offset + at, n);
        done += n;
    }
    return KILN_OK;
}
