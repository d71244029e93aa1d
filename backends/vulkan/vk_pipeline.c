/*
 * vk_pipeline.c - the descriptor and pipeline layouts every shader shares
 * (push descriptors, up to 5 storage buffers, 128 bytes of
 * push constants) and the compute pipelines, built from the SPIR-V the
 * build embedded (kiln_vk_spv_NAME[], from backends/vulkan/shaders/).
 *
 * A pipeline is created the first time an operation needs it and kept
 * until the shared device goes away, so every handle of the device and
 * every later call reuse it; a model that never meets a weight type never
 * compiles its kernels.
 */
#include <stdio.h>
#include <string.h>

#include "vk_internal.h"

extern const uint32_t kiln_vk_spv_quant_act[];
extern const size_t kiln_vk_spv_quant_act_size;
extern const uint32_t kiln_vk_spv_rms_norm[];
extern const size_t kiln_vk_spv_rms_norm_size;
extern const uint32_t kiln_vk_spv_binary[];
extern const size_t kiln_vk_spv_binary_size;
extern const uint32_t kiln_vk_spv_rope[];
extern const size_t kiln_vk_spv_rope_size;
extern const uint32_t kiln_vk_spv_kv_store[];
extern const size_t kiln_vk_spv_kv_store_size;
extern const uint32_t kiln_vk_spv_attention[];
extern const size_t kiln_vk_spv_attention_size;
extern const uint32_t kiln_vk_spv_mm_f32[];
extern const size_t kiln_vk_spv_mm_f32_size;
extern const uint32_t kiln_vk_spv_mm_f16[];
extern const size_t kiln_vk_spv_mm_f16_size;
extern const uint32_t kiln_vk_spv_mm_bf16[];
extern const size_t kiln_vk_spv_mm_bf16_size;
extern const uint32_t kiln_vk_spv_mm_q4_0[];
extern const size_t kiln_vk_spv_mm_q4_0_size;
extern const uint32_t kiln_vk_spv_mm_q4_1[];
extern const size_t kiln_vk_spv_mm_q4_1_size;
extern const uint32_t kiln_vk_spv_mm_q5_0[];
extern const size_t kiln_vk_spv_mm_q5_0_size;
extern const uint32_t kiln_vk_spv_mm_q5_1[];
extern const size_t kiln_vk_spv_mm_q5_1_size;
extern const uint32_t kiln_vk_spv_mm_q8_0[];
extern const size_t kiln_vk_spv_mm_q8_0_size;
extern const uint32_t kiln_vk_spv_mm_q4_k[];
extern const size_t kiln_vk_spv_mm_q4_k_size;
extern const uint32_t kiln_vk_spv_mm_q5_k[];
extern const size_t kiln_vk_spv_mm_q5_k_size;
extern const uint32_t kiln_vk_spv_mm_q6_k[];
extern const size_t kiln_vk_spv_mm_q6_k_size;
extern const uint32_t kiln_vk_spv_mm_q4_0s[];
extern const size_t kiln_vk_spv_mm_q4_0s_size;
extern const uint32_t kiln_vk_spv_mmsg_f32[];
extern const size_t kiln_vk_spv_mmsg_f32_size;
extern const uint32_t kiln_vk_spv_mmsg_f16[];
extern const size_t kiln_vk_spv_mmsg_f16_size;
extern const uint32_t kiln_vk_spv_mmsg_bf16[];
extern const size_t kiln_vk_spv_mmsg_bf16_size;
extern const uint32_t kiln_vk_spv_mmsg_q4_0[];
extern const size_t kiln_vk_spv_mmsg_q4_0_size;
extern const uint32_t kiln_vk_spv_mmsg_q4_1[];
extern const size_t kiln_vk_spv_mmsg_q4_1_size;
extern const uint32_t kiln_vk_spv_mmsg_q5_0[];
extern const size_t kiln_vk_spv_mmsg_q5_0_size;
extern const uint32_t kiln_vk_spv_mmsg_q5_1[];
extern const size_t kiln_vk_spv_mmsg_q5_1_size;
extern const uint32_t kiln_vk_spv_mmsg_q8_0[];
extern const size_t kiln_vk_spv_mmsg_q8_0_size;
extern const uint32_t kiln_vk_spv_mmsg_q4_k[];
extern const size_t kiln_vk_spv_mmsg_q4_k_size;
extern const uint32_t kiln_vk_spv_mmsg_q5_k[];
extern const size_t kiln_vk_spv_mmsg_q5_k_size;
extern const uint32_t kiln_vk_spv_mmsg_q6_k[];
extern const size_t kiln_vk_spv_mmsg_q6_k_size;
extern const uint32_t kiln_vk_spv_mmsg_q4_0s[];
extern const size_t kiln_vk_spv_mmsg_q4_0s_size;
extern const uint32_t kiln_vk_spv_getrows_f32[];
extern const size_t kiln_vk_spv_getrows_f32_size;
extern const uint32_t kiln_vk_spv_getrows_f16[];
extern const size_t kiln_vk_spv_getrows_f16_size;
extern const uint32_t kiln_vk_spv_getrows_bf16[];
extern const size_t kiln_vk_spv_getrows_bf16_size;
extern const uint32_t kiln_vk_spv_getrows_q4_0[];
extern const size_t kiln_vk_spv_getrows_q4_0_size;
extern const uint32_t kiln_vk_spv_getrows_q4_1[];
extern const size_t kiln_vk_spv_getrows_q4_1_size;
extern const uint32_t kiln_vk_spv_getrows_q5_0[];
extern const size_t kiln_vk_spv_getrows_q5_0_size;
extern const uint32_t kiln_vk_spv_getrows_q5_1[];
extern const size_t kiln_vk_spv_getrows_q5_1_size;
extern const uint32_t kiln_vk_spv_getrows_q8_0[];
extern const size_t kiln_vk_spv_getrows_q8_0_size;
extern const uint32_t kiln_vk_spv_getrows_q4_k[];
extern const size_t kiln_vk_spv_getrows_q4_k_size;
extern const uint32_t kiln_vk_spv_getrows_q5_k[];
extern const size_t kiln_vk_spv_getrows_q5_k_size;
extern const uint32_t kiln_vk_spv_getrows_q6_k[];
extern const size_t kiln_vk_spv_getrows_q6_k_size;
extern const uint32_t kiln_vk_spv_getrows_q4_0s[];
extern const size_t kiln_vk_spv_getrows_q4_0s_size;
extern const uint32_t kiln_vk_spv_mmt_f32[];
extern const size_t kiln_vk_spv_mmt_f32_size;
extern const uint32_t kiln_vk_spv_mmt_f16[];
extern const size_t kiln_vk_spv_mmt_f16_size;
extern const uint32_t kiln_vk_spv_mmt_bf16[];
extern const size_t kiln_vk_spv_mmt_bf16_size;
extern const uint32_t kiln_vk_spv_mmt_q4_0[];
extern const size_t kiln_vk_spv_mmt_q4_0_size;
extern const uint32_t kiln_vk_spv_mmt_q4_1[];
extern const size_t kiln_vk_spv_mmt_q4_1_size;
extern const uint32_t kiln_vk_spv_mmt_q5_0[];
extern const size_t kiln_vk_spv_mmt_q5_0_size;
extern const uint32_t kiln_vk_spv_mmt_q5_1[];
extern const size_t kiln_vk_spv_mmt_q5_1_size;
extern const uint32_t kiln_vk_spv_mmt_q8_0[];
extern const size_t kiln_vk_spv_mmt_q8_0_size;
extern const uint32_t kiln_vk_spv_mmt_q4_k[];
extern const size_t kiln_vk_spv_mmt_q4_k_size;
extern const uint32_t kiln_vk_spv_mmt_q5_k[];
extern const size_t kiln_vk_spv_mmt_q5_k_size;
extern const uint32_t kiln_vk_spv_mmt_q6_k[];
extern const size_t kiln_vk_spv_mmt_q6_k_size;
extern const uint32_t kiln_vk_spv_mmt_q4_0s[];
extern const size_t kiln_vk_spv_mmt_q4_0s_size;

extern const uint32_t kiln_vk_spv_mmv_f32[];
extern const size_t kiln_vk_spv_mmv_f32_size;
extern const uint32_t kiln_vk_spv_mmv_f16[];
extern const size_t kiln_vk_spv_mmv_f16_size;
extern const uint32_t kiln_vk_spv_mmv_bf16[];
extern const size_t kiln_vk_spv_mmv_bf16_size;
extern const uint32_t kiln_vk_spv_mmv_q4_0[];
extern const size_t kiln_vk_spv_mmv_q4_0_size;
extern const uint32_t kiln_vk_spv_mmv_q4_1[];
extern const size_t kiln_vk_spv_mmv_q4_1_size;
extern const uint32_t kiln_vk_spv_mmv_q5_0[];
extern const size_t kiln_vk_spv_mmv_q5_0_size;
extern const uint32_t kiln_vk_spv_mmv_q5_1[];
extern const size_t kiln_vk_spv_mmv_q5_1_size;
extern const uint32_t kiln_vk_spv_mmv_q8_0[];
extern const size_t kiln_vk_spv_mmv_q8_0_size;
extern const uint32_t kiln_vk_spv_mmv_q4_k[];
extern const size_t kiln_vk_spv_mmv_q4_k_size;
extern const uint32_t kiln_vk_spv_mmv_q5_k[];
extern const size_t kiln_vk_spv_mmv_q5_k_size;
extern const uint32_t kiln_vk_spv_mmv_q6_k[];
extern const size_t kiln_vk_spv_mmv_q6_k_size;
extern const uint32_t kiln_vk_spv_mmv_q4_0s[];
extern const size_t kiln_vk_spv_mmv_q4_0s_size;

extern const uint32_t kiln_vk_spv_mmc_f32[];
extern const size_t kiln_vk_spv_mmc_f32_size;
extern const uint32_t kiln_vk_spv_mmc_f16[];
extern const size_t kiln_vk_spv_mmc_f16_size;
extern const uint32_t kiln_vk_spv_mmc_bf16[];
extern const size_t kiln_vk_spv_mmc_bf16_size;
extern const uint32_t kiln_vk_spv_mmc_q4_0[];
extern const size_t kiln_vk_spv_mmc_q4_0_size;
extern const uint32_t kiln_vk_spv_mmc_q4_1[];
extern const size_t kiln_vk_spv_mmc_q4_1_size;
extern const uint32_t kiln_vk_spv_mmc_q5_0[];
extern const size_t kiln_vk_spv_mmc_q5_0_size;
extern const uint32_t kiln_vk_spv_mmc_q5_1[];
extern const size_t kiln_vk_spv_mmc_q5_1_size;
extern const uint32_t kiln_vk_spv_mmc_q8_0[];
extern const size_t kiln_vk_spv_mmc_q8_0_size;
extern const uint32_t kiln_vk_spv_mmc_q4_k[];
extern const size_t kiln_vk_spv_mmc_q4_k_size;
extern const uint32_t kiln_vk_spv_mmc_q5_k[];
extern const size_t kiln_vk_spv_mmc_q5_k_size;
extern const uint32_t kiln_vk_spv_mmc_q6_k[];
extern const size_t kiln_vk_spv_mmc_q6_k_size;
extern const uint32_t kiln_vk_spv_mmc_q4_0s[];
extern const size_t kiln_vk_spv_mmc_q4_0s_size;

extern const uint32_t kiln_vk_spv_mmv1_f32[];
extern const size_t kiln_vk_spv_mmv1_f32_size;
extern const uint32_t kiln_vk_spv_mmv1_f16[];
extern const size_t kiln_vk_spv_mmv1_f16_size;
extern const uint32_t kiln_vk_spv_mmv1_bf16[];
extern const size_t kiln_vk_spv_mmv1_bf16_size;
extern const uint32_t kiln_vk_spv_mmv1_q4_0[];
extern const size_t kiln_vk_spv_mmv1_q4_0_size;
extern const uint32_t kiln_vk_spv_mmv1_q4_1[];
extern const size_t kiln_vk_spv_mmv1_q4_1_size;
extern const uint32_t kiln_vk_spv_mmv1_q5_0[];
extern const size_t kiln_vk_spv_mmv1_q5_0_size;
extern const uint32_t kiln_vk_spv_mmv1_q5_1[];
extern const size_t kiln_vk_spv_mmv1_q5_1_size;
extern const uint32_t kiln_vk_spv_mmv1_q8_0[];
extern const size_t kiln_vk_spv_mmv1_q8_0_size;
extern const uint32_t kiln_vk_spv_mmv1_q4_k[];
extern const size_t kiln_vk_spv_mmv1_q4_k_size;
extern const uint32_t kiln_vk_spv_mmv1_q5_k[];
extern const size_t kiln_vk_spv_mmv1_q5_k_size;
extern const uint32_t kiln_vk_spv_mmv1_q6_k[];
extern const size_t kiln_vk_spv_mmv1_q6_k_size;
extern const uint32_t kiln_vk_spv_mmv1_q4_0s[];
extern const size_t kiln_vk_spv_mmv1_q4_0s_size;
extern const uint32_t kiln_vk_spv_mmvm1_f32[];
extern const size_t kiln_vk_spv_mmvm1_f32_size;
extern const uint32_t kiln_vk_spv_mmvm1_f16[];
extern const size_t kiln_vk_spv_mmvm1_f16_size;
extern const uint32_t kiln_vk_spv_mmvm1_bf16[];
extern const size_t kiln_vk_spv_mmvm1_bf16_size;
extern const uint32_t kiln_vk_spv_mmvm1_q4_0[];
extern const size_t kiln_vk_spv_mmvm1_q4_0_size;
extern const uint32_t kiln_vk_spv_mmvm1_q4_1[];
extern const size_t kiln_vk_spv_mmvm1_q4_1_size;
extern const uint32_t kiln_vk_spv_mmvm1_q5_0[];
extern const size_t kiln_vk_spv_mmvm1_q5_0_size;
extern const uint32_t kiln_vk_spv_mmvm1_q5_1[];
extern const size_t kiln_vk_spv_mmvm1_q5_1_size;
extern const uint32_t kiln_vk_spv_mmvm1_q8_0[];
extern const size_t kiln_vk_spv_mmvm1_q8_0_size;
extern const uint32_t kiln_vk_spv_mmvm1_q4_k[];
extern const size_t kiln_vk_spv_mmvm1_q4_k_size;
extern const uint32_t kiln_vk_spv_mmvm1_q5_k[];
extern const size_t kiln_vk_spv_mmvm1_q5_k_size;
extern const uint32_t kiln_vk_spv_mmvm1_q6_k[];
extern const size_t kiln_vk_spv_mmvm1_q6_k_size;
extern const uint32_t kiln_vk_spv_mmvm1_q4_0s[];
extern const size_t kiln_vk_spv_mmvm1_q4_0s_size;
extern const uint32_t kiln_vk_spv_add_rms_norm[];
extern const size_t kiln_vk_spv_add_rms_norm_size;
extern const uint32_t kiln_vk_spv_rope_kv[];
extern const size_t kiln_vk_spv_rope_kv_size;
extern const uint32_t kiln_vk_spv_mmvm_f32[];
extern const size_t kiln_vk_spv_mmvm_f32_size;
extern const uint32_t kiln_vk_spv_mmvm_f16[];
extern const size_t kiln_vk_spv_mmvm_f16_size;
extern const uint32_t kiln_vk_spv_mmvm_bf16[];
extern const size_t kiln_vk_spv_mmvm_bf16_size;
extern const uint32_t kiln_vk_spv_mmvm_q4_0[];
extern const size_t kiln_vk_spv_mmvm_q4_0_size;
extern const uint32_t kiln_vk_spv_mmvm_q4_1[];
extern const size_t kiln_vk_spv_mmvm_q4_1_size;
extern const uint32_t kiln_vk_spv_mmvm_q5_0[];
extern const size_t kiln_vk_spv_mmvm_q5_0_size;
extern const uint32_t kiln_vk_spv_mmvm_q5_1[];
extern const size_t kiln_vk_spv_mmvm_q5_1_size;
extern const uint32_t kiln_vk_spv_mmvm_q8_0[];
extern const size_t kiln_vk_spv_mmvm_q8_0_size;
extern const uint32_t kiln_vk_spv_mmvm_q4_k[];
extern const size_t kiln_vk_spv_mmvm_q4_k_size;
extern const uint32_t kiln_vk_spv_mmvm_q5_k[];
extern const size_t kiln_vk_spv_mmvm_q5_k_size;
extern const uint32_t kiln_vk_spv_mmvm_q6_k[];
extern const size_t kiln_vk_spv_mmvm_q6_k_size;
extern const uint32_t kiln_vk_spv_mmvm_q4_0s[];
extern const size_t kiln_vk_spv_mmvm_q4_0s_size;

extern const uint32_t kiln_vk_spv_mmce_f32[];
extern const size_t kiln_vk_spv_mmce_f32_size;
extern const uint32_t kiln_vk_spv_mmce_f16[];
extern const size_t kiln_vk_spv_mmce_f16_size;
extern const uint32_t kiln_vk_spv_mmce_bf16[];
extern const size_t kiln_vk_spv_mmce_bf16_size;
extern const uint32_t kiln_vk_spv_mmce_q4_0[];
extern const size_t kiln_vk_spv_mmce_q4_0_size;
extern const uint32_t kiln_vk_spv_mmce_q4_1[];
extern const size_t kiln_vk_spv_mmce_q4_1_size;
extern const uint32_t kiln_vk_spv_mmce_q5_0[];
extern const size_t kiln_vk_spv_mmce_q5_0_size;
extern const uint32_t kiln_vk_spv_mmce_q5_1[];
extern const size_t kiln_vk_spv_mmce_q5_1_size;
extern const uint32_t kiln_vk_spv_mmce_q8_0[];
extern const size_t kiln_vk_spv_mmce_q8_0_size;
extern const uint32_t kiln_vk_spv_mmce_q4_k[];
extern const size_t kiln_vk_spv_mmce_q4_k_size;
extern const uint32_t kiln_vk_spv_mmce_q5_k[];
extern const size_t kiln_vk_spv_mmce_q5_k_size;
extern const uint32_t kiln_vk_spv_mmce_q6_k[];
extern const size_t kiln_vk_spv_mmce_q6_k_size;
extern const uint32_t kiln_vk_spv_mmce_q4_0s[];
extern const size_t kiln_vk_spv_mmce_q4_0s_size;
extern const uint32_t kiln_vk_spv_mmc1_f32[];
extern const size_t kiln_vk_spv_mmc1_f32_size;
extern const uint32_t kiln_vk_spv_mmc1_f16[];
extern const size_t kiln_vk_spv_mmc1_f16_size;
extern const uint32_t kiln_vk_spv_mmc1_bf16[];
extern const size_t kiln_vk_spv_mmc1_bf16_size;
extern const uint32_t kiln_vk_spv_mmc1_q4_0[];
extern const size_t kiln_vk_spv_mmc1_q4_0_size;
extern const uint32_t kiln_vk_spv_mmc1_q4_1[];
extern const size_t kiln_vk_spv_mmc1_q4_1_size;
extern const uint32_t kiln_vk_spv_mmc1_q5_0[];
extern const size_t kiln_vk_spv_mmc1_q5_0_size;
extern const uint32_t kiln_vk_spv_mmc1_q5_1[];
extern const size_t kiln_vk_spv_mmc1_q5_1_size;
extern const uint32_t kiln_vk_spv_mmc1_q8_0[];
extern const size_t kiln_vk_spv_mmc1_q8_0_size;
extern const uint32_t kiln_vk_spv_mmc1_q4_k[];
extern const size_t kiln_vk_spv_mmc1_q4_k_size;
extern const uint32_t kiln_vk_spv_mmc1_q5_k[];
extern const size_t kiln_vk_spv_mmc1_q5_k_size;
extern const uint32_t kiln_vk_spv_mmc1_q6_k[];
extern const size_t kiln_vk_spv_mmc1_q6_k_size;
extern const uint32_t kiln_vk_spv_mmc1_q4_0s[];
extern const size_t kiln_vk_spv_mmc1_q4_0s_size;
extern const uint32_t kiln_vk_spv_attn_mc_64[];
extern const size_t kiln_vk_spv_attn_mc_64_size;
extern const uint32_t kiln_vk_spv_attn_mc_128[];
extern const size_t kiln_vk_spv_attn_mc_128_size;
extern const uint32_t kiln_vk_spv_attn_mce_64[];
extern const size_t kiln_vk_spv_attn_mce_64_size;
extern const uint32_t kiln_vk_spv_attn_mce_128[];
extern const size_t kiln_vk_spv_attn_mce_128_size;
extern const uint32_t kiln_vk_spv_q4_0_split[];
extern const size_t kiln_vk_spv_q4_0_split_size;
/* the later shaders, through one declaration and one table entry each */
#define SPV_DECL(n) extern const uint32_t kiln_vk_spv_##n[]; extern const size_t kiln_vk_spv_##n##_size;
SPV_DECL(attn_dec)
SPV_DECL(mmv1_q4_0s_idot) SPV_DECL(mmv1_q8_0_idot) SPV_DECL(mmv1_q4_k_idot) SPV_DECL(mmv1_q6_k_idot)
SPV_DECL(mmvm1_q4_0s_idot) SPV_DECL(mmvm1_q8_0_idot) SPV_DECL(mmvm1_q4_k_idot) SPV_DECL(mmvm1_q6_k_idot)
SPV_DECL(mmcw_f32) SPV_DECL(mmcw_f16) SPV_DECL(mmcw_bf16) SPV_DECL(mmcw_q4_0) SPV_DECL(mmcw_q4_1) SPV_DECL(mmcw_q5_0)
SPV_DECL(mmcw_q5_1) SPV_DECL(mmcw_q8_0) SPV_DECL(mmcw_q4_k) SPV_DECL(mmcw_q5_k) SPV_DECL(mmcw_q6_k) SPV_DECL(mmcw_q4_0s)
SPV_DECL(attn_dec_rope)
SPV_DECL(attn_fold)
SPV_DECL(mmv_q4_0s_idot) SPV_DECL(mmv_q8_0_idot) SPV_DECL(mmv_q4_k_idot) SPV_DECL(mmv_q6_k_idot)
SPV_DECL(mmvm_q4_0s_idot) SPV_DECL(mmvm_q8_0_idot) SPV_DECL(mmvm_q4_k_idot) SPV_DECL(mmvm_q6_k_idot)
SPV_DECL(mmv1n_f16) SPV_DECL(mmv1n_q4_0s) SPV_DECL(mmv1n_q4_0s_idot)
SPV_DECL(mmvm1s_f16) SPV_DECL(mmvm1s_q4_0s) SPV_DECL(mmvm1s_q4_0s_idot)
SPV_DECL(mmv1r_q4_0s) SPV_DECL(mmv1r_q4_0s_idot) SPV_DECL(mmvm1p_q4_0s) SPV_DECL(mmvm1p_q4_0s_idot)
SPV_DECL(mmvm1sp_q4_0s) SPV_DECL(mmvm1sp_q4_0s_idot)
SPV_DECL(attn_dec_rope1)
#undef SPV_DECL

static const struct {
    const char *name;
    const uint32_t *code;
    const size_t *size;
} shaders[KILN_VK_P_COUNT] = {
    {"quant_act", kiln_vk_spv_quant_act, &kiln_vk_spv_quant_act_size},
    {"rms_norm", kiln_vk_spv_rms_norm, &kiln_vk_spv_rms_norm_size},
    {"binary", kiln_vk_spv_binary, &kiln_vk_spv_binary_size},
    {"rope", kiln_vk_spv_rope, &kiln_vk_spv_rope_size},
    {"kv_store", kiln_vk_spv_kv_store, &kiln_vk_spv_kv_store_size},
    {"attention", kiln_vk_spv_attention, &kiln_vk_spv_attention_size},
    {"mm_f32", kiln_vk_spv_mm_f32, &kiln_vk_spv_mm_f32_size},
    {"mm_f16", kiln_vk_spv_mm_f16, &kiln_vk_spv_mm_f16_size},
    {"mm_bf16", kiln_vk_spv_mm_bf16, &kiln_vk_spv_mm_bf16_size},
    {"mm_q4_0", kiln_vk_spv_mm_q4_0, &kiln_vk_spv_mm_q4_0_size},
    {"mm_q4_1", kiln_vk_spv_mm_q4_1, &kiln_vk_spv_mm_q4_1_size},
    {"mm_q5_0", kiln_vk_spv_mm_q5_0, &kiln_vk_spv_mm_q5_0_size},
    {"mm_q5_1", kiln_vk_spv_mm_q5_1, &kiln_vk_spv_mm_q5_1_size},
    {"mm_q8_0", kiln_vk_spv_mm_q8_0, &kiln_vk_spv_mm_q8_0_size},
    {"mm_q4_k", kiln_vk_spv_mm_q4_k, &kiln_vk_spv_mm_q4_k_size},
    {"mm_q5_k", kiln_vk_spv_mm_q5_k, &kiln_vk_spv_mm_q5_k_size},
    {"mm_q6_k", kiln_vk_spv_mm_q6_k, &kiln_vk_spv_mm_q6_k_size},
    {"mm_q4_0s", kiln_vk_spv_mm_q4_0s, &kiln_vk_spv_mm_q4_0s_size}, /* Q4_0, split layout */
    {"mmsg_f32", kiln_vk_spv_mmsg_f32, &kiln_vk_spv_mmsg_f32_size},
    {"mmsg_f16", kiln_vk_spv_mmsg_f16, &kiln_vk_spv_mmsg_f16_size},
    {"mmsg_bf16", kiln_vk_spv_mmsg_bf16, &kiln_vk_spv_mmsg_bf16_size},
    {"mmsg_q4_0", kiln_vk_spv_mmsg_q4_0, &kiln_vk_spv_mmsg_q4_0_size},
    {"mmsg_q4_1", kiln_vk_spv_mmsg_q4_1, &kiln_vk_spv_mmsg_q4_1_size},
    {"mmsg_q5_0", kiln_vk_spv_mmsg_q5_0, &kiln_vk_spv_mmsg_q5_0_size},
    {"mmsg_q5_1", kiln_vk_spv_mmsg_q5_1, &kiln_vk_spv_mmsg_q5_1_size},
    {"mmsg_q8_0", kiln_vk_spv_mmsg_q8_0, &kiln_vk_spv_mmsg_q8_0_size},
    {"mmsg_q4_k", kiln_vk_spv_mmsg_q4_k, &kiln_vk_spv_mmsg_q4_k_size},
    {"mmsg_q5_k", kiln_vk_spv_mmsg_q5_k, &kiln_vk_spv_mmsg_q5_k_size},
    {"mmsg_q6_k", kiln_vk_spv_mmsg_q6_k, &kiln_vk_spv_mmsg_q6_k_size},
    {"mmsg_q4_0s", kiln_vk_spv_mmsg_q4_0s, &kiln_vk_spv_mmsg_q4_0s_size}, /* Q4_0, split layout */
    {"getrows_f32", kiln_vk_spv_getrows_f32, &kiln_vk_spv_getrows_f32_size},
    {"getrows_f16", kiln_vk_spv_getrows_f16, &kiln_vk_spv_getrows_f16_size},
    {"getrows_bf16", kiln_vk_spv_getrows_bf16, &kiln_vk_spv_getrows_bf16_size},
    {"getrows_q4_0", kiln_vk_spv_getrows_q4_0, &kiln_vk_spv_getrows_q4_0_size},
    {"getrows_q4_1", kiln_vk_spv_getrows_q4_1, &kiln_vk_spv_getrows_q4_1_size},
    {"getrows_q5_0", kiln_vk_spv_getrows_q5_0, &kiln_vk_spv_getrows_q5_0_size},
    {"getrows_q5_1", kiln_vk_spv_getrows_q5_1, &kiln_vk_spv_getrows_q5_1_size},
    {"getrows_q8_0", kiln_vk_spv_getrows_q8_0, &kiln_vk_spv_getrows_q8_0_size},
    {"getrows_q4_k", kiln_vk_spv_getrows_q4_k, &kiln_vk_spv_getrows_q4_k_size},
    {"getrows_q5_k", kiln_vk_spv_getrows_q5_k, &kiln_vk_spv_getrows_q5_k_size},
    {"getrows_q6_k", kiln_vk_spv_getrows_q6_k, &kiln_vk_spv_getrows_q6_k_size},
    {"getrows_q4_0s", kiln_vk_spv_getrows_q4_0s, &kiln_vk_spv_getrows_q4_0s_size}, /* Q4_0, split layout */
    {"mmt_f32", kiln_vk_spv_mmt_f32, &kiln_vk_spv_mmt_f32_size},
    {"mmt_f16", kiln_vk_spv_mmt_f16, &kiln_vk_spv_mmt_f16_size},
    {"mmt_bf16", kiln_vk_spv_mmt_bf16, &kiln_vk_spv_mmt_bf16_size},
    {"mmt_q4_0", kiln_vk_spv_mmt_q4_0, &kiln_vk_spv_mmt_q4_0_size},
    {"mmt_q4_1", kiln_vk_spv_mmt_q4_1, &kiln_vk_spv_mmt_q4_1_size},
    {"mmt_q5_0", kiln_vk_spv_mmt_q5_0, &kiln_vk_spv_mmt_q5_0_size},
    {"mmt_q5_1", kiln_vk_spv_mmt_q5_1, &kiln_vk_spv_mmt_q5_1_size},
    {"mmt_q8_0", kiln_vk_spv_mmt_q8_0, &kiln_vk_spv_mmt_q8_0_size},
    {"mmt_q4_k", kiln_vk_spv_mmt_q4_k, &kiln_vk_spv_mmt_q4_k_size},
    {"mmt_q5_k", kiln_vk_spv_mmt_q5_k, &kiln_vk_spv_mmt_q5_k_size},
    {"mmt_q6_k", kiln_vk_spv_mmt_q6_k, &kiln_vk_spv_mmt_q6_k_size},
    {"mmt_q4_0s", kiln_vk_spv_mmt_q4_0s, &kiln_vk_spv_mmt_q4_0s_size}, /* Q4_0, split layout */
    {"mmv_f32", kiln_vk_spv_mmv_f32, &kiln_vk_spv_mmv_f32_size},
    {"mmv_f16", kiln_vk_spv_mmv_f16, &kiln_vk_spv_mmv_f16_size},
    {"mmv_bf16", kiln_vk_spv_mmv_bf16, &kiln_vk_spv_mmv_bf16_size},
    {"mmv_q4_0", kiln_vk_spv_mmv_q4_0, &kiln_vk_spv_mmv_q4_0_size},
    {"mmv_q4_1", kiln_vk_spv_mmv_q4_1, &kiln_vk_spv_mmv_q4_1_size},
    {"mmv_q5_0", kiln_vk_spv_mmv_q5_0, &kiln_vk_spv_mmv_q5_0_size},
    {"mmv_q5_1", kiln_vk_spv_mmv_q5_1, &kiln_vk_spv_mmv_q5_1_size},
    {"mmv_q8_0", kiln_vk_spv_mmv_q8_0, &kiln_vk_spv_mmv_q8_0_size},
    {"mmv_q4_k", kiln_vk_spv_mmv_q4_k, &kiln_vk_spv_mmv_q4_k_size},
    {"mmv_q5_k", kiln_vk_spv_mmv_q5_k, &kiln_vk_spv_mmv_q5_k_size},
    {"mmv_q6_k", kiln_vk_spv_mmv_q6_k, &kiln_vk_spv_mmv_q6_k_size},
    {"mmv_q4_0s", kiln_vk_spv_mmv_q4_0s, &kiln_vk_spv_mmv_q4_0s_size}, /* Q4_0, split layout */
    {"mmc_f32", kiln_vk_spv_mmc_f32, &kiln_vk_spv_mmc_f32_size},
    {"mmc_f16", kiln_vk_spv_mmc_f16, &kiln_vk_spv_mmc_f16_size},
    {"mmc_bf16", kiln_vk_spv_mmc_bf16, &kiln_vk_spv_mmc_bf16_size},
    {"mmc_q4_0", kiln_vk_spv_mmc_q4_0, &kiln_vk_spv_mmc_q4_0_size},
    {"mmc_q4_1", kiln_vk_spv_mmc_q4_1, &kiln_vk_spv_mmc_q4_1_size},
    {"mmc_q5_0", kiln_vk_spv_mmc_q5_0, &kiln_vk_spv_mmc_q5_0_size},
    {"mmc_q5_1", kiln_vk_spv_mmc_q5_1, &kiln_vk_spv_mmc_q5_1_size},
    {"mmc_q8_0", kiln_vk_spv_mmc_q8_0, &kiln_vk_spv_mmc_q8_0_size},
    {"mmc_q4_k", kiln_vk_spv_mmc_q4_k, &kiln_vk_spv_mmc_q4_k_size},
    {"mmc_q5_k", kiln_vk_spv_mmc_q5_k, &kiln_vk_spv_mmc_q5_k_size},
    {"mmc_q6_k", kiln_vk_spv_mmc_q6_k, &kiln_vk_spv_mmc_q6_k_size},
    {"mmc_q4_0s", kiln_vk_spv_mmc_q4_0s, &kiln_vk_spv_mmc_q4_0s_size}, /* Q4_0, split layout */
    {"mmce_f32", kiln_vk_spv_mmce_f32, &kiln_vk_spv_mmce_f32_size},
    {"mmce_f16", kiln_vk_spv_mmce_f16, &kiln_vk_spv_mmce_f16_size},
    {"mmce_bf16", kiln_vk_spv_mmce_bf16, &kiln_vk_spv_mmce_bf16_size},
    {"mmce_q4_0", kiln_vk_spv_mmce_q4_0, &kiln_vk_spv_mmce_q4_0_size},
    {"mmce_q4_1", kiln_vk_spv_mmce_q4_1, &kiln_vk_spv_mmce_q4_1_size},
    {"mmce_q5_0", kiln_vk_spv_mmce_q5_0, &kiln_vk_spv_mmce_q5_0_size},
    {"mmce_q5_1", kiln_vk_spv_mmce_q5_1, &kiln_vk_spv_mmce_q5_1_size},
    {"mmce_q8_0", kiln_vk_spv_mmce_q8_0, &kiln_vk_spv_mmce_q8_0_size},
    {"mmce_q4_k", kiln_vk_spv_mmce_q4_k, &kiln_vk_spv_mmce_q4_k_size},
    {"mmce_q5_k", kiln_vk_spv_mmce_q5_k, &kiln_vk_spv_mmce_q5_k_size},
    {"mmce_q6_k", kiln_vk_spv_mmce_q6_k, &kiln_vk_spv_mmce_q6_k_size},
    {"mmce_q4_0s", kiln_vk_spv_mmce_q4_0s, &kiln_vk_spv_mmce_q4_0s_size}, /* Q4_0, split layout */
    {"mmc1_f32", kiln_vk_spv_mmc1_f32, &kiln_vk_spv_mmc1_f32_size},
    {"mmc1_f16", kiln_vk_spv_mmc1_f16, &kiln_vk_spv_mmc1_f16_size},
    {"mmc1_bf16", kiln_vk_spv_mmc1_bf16, &kiln_vk_spv_mmc1_bf16_size},
    {"mmc1_q4_0", kiln_vk_spv_mmc1_q4_0, &kiln_vk_spv_mmc1_q4_0_size},
    {"mmc1_q4_1", kiln_vk_spv_mmc1_q4_1, &kiln_vk_spv_mmc1_q4_1_size},
    {"mmc1_q5_0", kiln_vk_spv_mmc1_q5_0, &kiln_vk_spv_mmc1_q5_0_size},
    {"mmc1_q5_1", kiln_vk_spv_mmc1_q5_1, &kiln_vk_spv_mmc1_q5_1_size},
    {"mmc1_q8_0", kiln_vk_spv_mmc1_q8_0, &kiln_vk_spv_mmc1_q8_0_size},
    {"mmc1_q4_k", kiln_vk_spv_mmc1_q4_k, &kiln_vk_spv_mmc1_q4_k_size},
    {"mmc1_q5_k", kiln_vk_spv_mmc1_q5_k, &kiln_vk_spv_mmc1_q5_k_size},
    {"mmc1_q6_k", kiln_vk_spv_mmc1_q6_k, &kiln_vk_spv_mmc1_q6_k_size},
    {"mmc1_q4_0s", kiln_vk_spv_mmc1_q4_0s, &kiln_vk_spv_mmc1_q4_0s_size}, /* Q4_0, split layout */
    {"mmvm_f32", kiln_vk_spv_mmvm_f32, &kiln_vk_spv_mmvm_f32_size},
    {"mmvm_f16", kiln_vk_spv_mmvm_f16, &kiln_vk_spv_mmvm_f16_size},
    {"mmvm_bf16", kiln_vk_spv_mmvm_bf16, &kiln_vk_spv_mmvm_bf16_size},
    {"mmvm_q4_0", kiln_vk_spv_mmvm_q4_0, &kiln_vk_spv_mmvm_q4_0_size},
    {"mmvm_q4_1", kiln_vk_spv_mmvm_q4_1, &kiln_vk_spv_mmvm_q4_1_size},
    {"mmvm_q5_0", kiln_vk_spv_mmvm_q5_0, &kiln_vk_spv_mmvm_q5_0_size},
    {"mmvm_q5_1", kiln_vk_spv_mmvm_q5_1, &kiln_vk_spv_mmvm_q5_1_size},
    {"mmvm_q8_0", kiln_vk_spv_mmvm_q8_0, &kiln_vk_spv_mmvm_q8_0_size},
    {"mmvm_q4_k", kiln_vk_spv_mmvm_q4_k, &kiln_vk_spv_mmvm_q4_k_size},
    {"mmvm_q5_k", kiln_vk_spv_mmvm_q5_k, &kiln_vk_spv_mmvm_q5_k_size},
    {"mmvm_q6_k", kiln_vk_spv_mmvm_q6_k, &kiln_vk_spv_mmvm_q6_k_size},
    {"mmvm_q4_0s", kiln_vk_spv_mmvm_q4_0s, &kiln_vk_spv_mmvm_q4_0s_size}, /* Q4_0, split layout */
    {"add_rms_norm", kiln_vk_spv_add_rms_norm, &kiln_vk_spv_add_rms_norm_size},
    {"rope_kv", kiln_vk_spv_rope_kv, &kiln_vk_spv_rope_kv_size},
    {"mmv1_f32", kiln_vk_spv_mmv1_f32, &kiln_vk_spv_mmv1_f32_size},
    {"mmv1_f16", kiln_vk_spv_mmv1_f16, &kiln_vk_spv_mmv1_f16_size},
    {"mmv1_bf16", kiln_vk_spv_mmv1_bf16, &kiln_vk_spv_mmv1_bf16_size},
    {"mmv1_q4_0", kiln_vk_spv_mmv1_q4_0, &kiln_vk_spv_mmv1_q4_0_size},
    {"mmv1_q4_1", kiln_vk_spv_mmv1_q4_1, &kiln_vk_spv_mmv1_q4_1_size},
    {"mmv1_q5_0", kiln_vk_spv_mmv1_q5_0, &kiln_vk_spv_mmv1_q5_0_size},
    {"mmv1_q5_1", kiln_vk_spv_mmv1_q5_1, &kiln_vk_spv_mmv1_q5_1_size},
    {"mmv1_q8_0", kiln_vk_spv_mmv1_q8_0, &kiln_vk_spv_mmv1_q8_0_size},
    {"mmv1_q4_k", kiln_vk_spv_mmv1_q4_k, &kiln_vk_spv_mmv1_q4_k_size},
    {"mmv1_q5_k", kiln_vk_spv_mmv1_q5_k, &kiln_vk_spv_mmv1_q5_k_size},
    {"mmv1_q6_k", kiln_vk_spv_mmv1_q6_k, &kiln_vk_spv_mmv1_q6_k_size},
    {"mmv1_q4_0s", kiln_vk_spv_mmv1_q4_0s, &kiln_vk_spv_mmv1_q4_0s_size}, /* Q4_0, split layout */
    {"mmvm1_f32", kiln_vk_spv_mmvm1_f32, &kiln_vk_spv_mmvm1_f32_size},
    {"mmvm1_f16", kiln_vk_spv_mmvm1_f16, &kiln_vk_spv_mmvm1_f16_size},
    {"mmvm1_bf16", kiln_vk_spv_mmvm1_bf16, &kiln_vk_spv_mmvm1_bf16_size},
    {"mmvm1_q4_0", kiln_vk_spv_mmvm1_q4_0, &kiln_vk_spv_mmvm1_q4_0_size},
    {"mmvm1_q4_1", kiln_vk_spv_mmvm1_q4_1, &kiln_vk_spv_mmvm1_q4_1_size},
    {"mmvm1_q5_0", kiln_vk_spv_mmvm1_q5_0, &kiln_vk_spv_mmvm1_q5_0_size},
    {"mmvm1_q5_1", kiln_vk_spv_mmvm1_q5_1, &kiln_vk_spv_mmvm1_q5_1_size},
    {"mmvm1_q8_0", kiln_vk_spv_mmvm1_q8_0, &kiln_vk_spv_mmvm1_q8_0_size},
    {"mmvm1_q4_k", kiln_vk_spv_mmvm1_q4_k, &kiln_vk_spv_mmvm1_q4_k_size},
    {"mmvm1_q5_k", kiln_vk_spv_mmvm1_q5_k, &kiln_vk_spv_mmvm1_q5_k_size},
    {"mmvm1_q6_k", kiln_vk_spv_mmvm1_q6_k, &kiln_vk_spv_mmvm1_q6_k_size},
    {"mmvm1_q4_0s", kiln_vk_spv_mmvm1_q4_0s, &kiln_vk_spv_mmvm1_q4_0s_size}, /* Q4_0, split layout */
    {"attn_mc_64", kiln_vk_spv_attn_mc_64, &kiln_vk_spv_attn_mc_64_size},
    {"attn_mc_128", kiln_vk_spv_attn_mc_128, &kiln_vk_spv_attn_mc_128_size},
    {"attn_mce_64", kiln_vk_spv_attn_mce_64, &kiln_vk_spv_attn_mce_64_size},
    {"attn_mce_128", kiln_vk_spv_attn_mce_128, &kiln_vk_spv_attn_mce_128_size},
    {"q4_0_split", kiln_vk_spv_q4_0_split, &kiln_vk_spv_q4_0_split_size},
#define SPV_ENTRY(n) {#n, kiln_vk_spv_##n, &kiln_vk_spv_##n##_size}
    SPV_ENTRY(attn_dec),
    SPV_ENTRY(mmv1_q4_0s_idot), SPV_ENTRY(mmv1_q8_0_idot), SPV_ENTRY(mmv1_q4_k_idot), SPV_ENTRY(mmv1_q6_k_idot),
    SPV_ENTRY(mmvm1_q4_0s_idot), SPV_ENTRY(mmvm1_q8_0_idot), SPV_ENTRY(mmvm1_q4_k_idot), SPV_ENTRY(mmvm1_q6_k_idot),
    SPV_ENTRY(mmcw_f32), SPV_ENTRY(mmcw_f16), SPV_ENTRY(mmcw_bf16), SPV_ENTRY(mmcw_q4_0), SPV_ENTRY(mmcw_q4_1),
    SPV_ENTRY(mmcw_q5_0), SPV_ENTRY(mmcw_q5_1), SPV_ENTRY(mmcw_q8_0), SPV_ENTRY(mmcw_q4_k), SPV_ENTRY(mmcw_q5_k),
    SPV_ENTRY(mmcw_q6_k), SPV_ENTRY(mmcw_q4_0s),
    SPV_ENTRY(attn_dec_rope),
    SPV_ENTRY(attn_fold),
    SPV_ENTRY(mmv_q4_0s_idot), SPV_ENTRY(mmv_q8_0_idot), SPV_ENTRY(mmv_q4_k_idot), SPV_ENTRY(mmv_q6_k_idot),
    SPV_ENTRY(mmvm_q4_0s_idot), SPV_ENTRY(mmvm_q8_0_idot), SPV_ENTRY(mmvm_q4_k_idot), SPV_ENTRY(mmvm_q6_k_idot),
    SPV_ENTRY(mmv1n_f16), SPV_ENTRY(mmv1n_q4_0s), SPV_ENTRY(mmv1n_q4_0s_idot),
    SPV_ENTRY(mmvm1s_f16), SPV_ENTRY(mmvm1s_q4_0s), SPV_ENTRY(mmvm1s_q4_0s_idot),
    SPV_ENTRY(mmv1r_q4_0s), SPV_ENTRY(mmv1r_q4_0s_idot), SPV_ENTRY(mmvm1p_q4_0s), SPV_ENTRY(mmvm1p_q4_0s_idot),
    SPV_ENTRY(mmvm1sp_q4_0s), SPV_ENTRY(mmvm1sp_q4_0s_idot),
    SPV_ENTRY(attn_dec_rope1)
#undef SPV_ENTRY
};

const char *kiln_vk_pipeline_name(int which) {
    return which >= 0 && which < KILN_VK_P_COUNT ? shaders[which].name : "?";
}

kiln_status kiln_vk_layout_create(kiln_vk_shared *sh) {
    VkDescriptorSetLayoutBinding b[KILN_VK_MAX_BINDINGS];
    memset(b, 0, sizeof b);
    for (uint32_t i = 0; i < KILN_VK_MAX_BINDINGS; i++) {
        b[i].binding = i;
        b[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        b[i].descriptorCount = 1;
        b[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkDescriptorSetLayoutCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
    dci.flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR;
    dci.bindingCount = KILN_VK_MAX_BINDINGS;
    dci.pBindings = b;
    VkResult r = vkCreateDescriptorSetLayout(sh->device, &dci, NULL, &sh->dsl);
    if (r != VK_SUCCESS) {
        sh->dsl = VK_NULL_HANDLE;
        return kiln_vk_result(r, "vkCreateDescriptorSetLayout");
    }
    VkPushConstantRange pc = {VK_SHADER_STAGE_COMPUTE_BIT, 0, KILN_VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo lci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    lci.setLayoutCount = 1;
    lci.pSetLayouts = &sh->dsl;
    lci.pushConstantRangeCount = 1;
    lci.pPushConstantRanges = &pc;
    r = vkCreatePipelineLayout(sh->device, &lci, NULL, &sh->layout);
    if (r != VK_SUCCESS) {
        sh->layout = VK_NULL_HANDLE;
        return kiln_vk_result(r, "vkCreatePipelineLayout");
    }
    return KILN_OK;
}

void kiln_vk_pipelines_destroy(kiln_vk_shared *sh) {
    for (int i = 0; i < KILN_VK_P_COUNT; i++)
        if (sh->pipelines[i]) {
            vkDestroyPipeline(sh->device, sh->pipelines[i], NULL);
            sh->pipelines[i] = VK_NULL_HANDLE;
        }
}

uint32_t kiln_vk_mmv_rows(const kiln_vk_shared *sh, int slot) {
    if (sh->mmv_rows) return sh->mmv_rows;
    return slot == kiln_vk_type_slot(KILN_VK_T_Q4_0) || slot == KILN_VK_SLOT_Q4_0S ? 2u : 1u;
}

uint32_t kiln_vk_mmv_groups_per_wg(const kiln_vk_shared *sh, uint32_t width, bool kq) {
    uint32_t ns = width / (sh->subgroup_size ? sh->subgroup_size : 32);
    if (ns == 0) ns = 1;
    return kq ? ns / (ns < 4 ? ns : 4) : ns;
}

/* The weight slot of a decode kernel's pipeline (mmv, mmvm, mmv1, mmvm1), -1 otherwise. */
static int mmv_slot(int which) {
    static const int first[4] = {KILN_VK_P_MMV_FIRST, KILN_VK_P_MMVM_FIRST, KILN_VK_P_MMV1_FIRST,
                                 KILN_VK_P_MMVM1_FIRST};
    for (int i = 0; i < 4; i++)
        if (which >= first[i] && which < first[i] + KILN_VK_N_SLOTS) return which - first[i];
    if (which >= KILN_VK_P_MMV1_IDOT_FIRST && which < KILN_VK_P_IDOT_END)
        return kiln_vk_idot_slot((which - KILN_VK_P_MMV1_IDOT_FIRST) % 4);
    if (which >= KILN_VK_P_MMV_IDOT_FIRST && which < KILN_VK_P_IDOT8_END)
        return kiln_vk_idot_slot((which - KILN_VK_P_MMV_IDOT_FIRST) % 4);
    if (which == KILN_VK_P_MMV1N_F16 || which == KILN_VK_P_MMVM1S_F16) return kiln_vk_type_slot(KILN_VK_T_F16);
    if (which == KILN_VK_P_MMV1N_Q4_0S || which == KILN_VK_P_MMV1N_Q4_0S_IDOT || which == KILN_VK_P_MMVM1S_Q4_0S ||
        which == KILN_VK_P_MMVM1S_Q4_0S_IDOT || (which >= KILN_VK_P_MMV1R_Q4_0S && which <= KILN_VK_P_MMVM1SP_Q4_0S_IDOT))
        return KILN_VK_SLOT_Q4_0S;
    return -1;
}

int kiln_vk_idot_slot(int i) {
    static const int32_t types[4] = {-1, KILN_VK_T_Q8_0, KILN_VK_T_Q4_K, KILN_VK_T_Q6_K};
    if (i < 0 || i >= 4) return -1;
    return i == 0 ? KILN_VK_SLOT_Q4_0S : kiln_vk_type_slot(types[i]);
}

int kiln_vk_idot_index(int slot) {
    for (int i = 0; i < 4; i++)
        if (slot >= 0 && kiln_vk_idot_slot(i) == slot) return i;
    return -1;
}

/* KILN_VK_PIPELINE_STATS: what the driver reports of a pipeline's compiled
 * form (NVIDIA: registers, shared memory, local memory), one line each. */
static void pipeline_stats_print(kiln_vk_shared *sh, VkPipeline pipe, const char *name) {
    VkPipelineInfoKHR pi = {.sType = VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR, .pipeline = pipe};
    uint32_t ne = 0;
    if (sh->get_exec_props(sh->device, &pi, &ne, NULL) != VK_SUCCESS || ne == 0) return;
    VkPipelineExecutableInfoKHR ei = {.sType = VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR, .pipeline = pipe};
    VkPipelineExecutableStatisticKHR st[32];
    uint32_t n = 32;
    for (uint32_t i = 0; i < n; i++) st[i] = (VkPipelineExecutableStatisticKHR){.sType = VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR};
    VkResult r = sh->get_exec_stats(sh->device, &ei, &n, st);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) return;
    fprintf(stderr, "kiln vulkan pipeline %s:", name);
    for (uint32_t i = 0; i < n; i++) {
        fprintf(stderr, " %s=", st[i].name);
        switch (st[i].format) {
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR: fprintf(stderr, "%u", (unsigned)st[i].value.b32); break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR: fprintf(stderr, "%lld", (long long)st[i].value.i64); break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR: fprintf(stderr, "%llu", (unsigned long long)st[i].value.u64); break;
        default: fprintf(stderr, "%g", st[i].value.f64); break;
        }
    }
    fprintf(stderr, "\n");
}

kiln_status kiln_vk_pipeline(kiln_vk_shared *sh, int which, VkPipeline *out) {
    if (which < 0 || which >= KILN_VK_P_COUNT)
        return kiln_error(KILN_E_INTERNAL, "vulkan backend: no pipeline %d", which);
    pthread_mutex_lock(&sh->pipe_lock);
    kiln_status st = KILN_OK;
    if (!sh->pipelines[which]) {
        VkShaderModuleCreateInfo mci = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
        mci.codeSize = *shaders[which].size;
        mci.pCode = shaders[which].code;
        VkShaderModule mod;
        VkResult r = vkCreateShaderModule(sh->device, &mci, NULL, &mod);
        if (r == VK_SUCCESS) {
            VkComputePipelineCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
            ci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
            ci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
            ci.stage.module = mod;
            ci.stage.pName = "main";
            /* specialization constants (shaders without them ignore
             * them): 0 the subgroup size (attn_dec.comp sizes arrays by
             * it), 1 mmv.glsl's weight rows per subgroup pass, 2 eight
             * subgroups' invocations (attn_dec.comp's workgroup), 3-5
             * mmc.glsl's tile and workgroup size, 6 its KILN_VK_MMC_SKIP, 7 its
             * staged row in 16-byte vectors, 8 its stages, 9 its
             * chunks per stage, 10 its workgroup order, 11 attn_dec.glsl's
             * positions per subgroup step, 12 mmv.glsl KILN_SWIGLU's
             * workgroup width, 13 mmv.glsl's 16-byte activation loads,
             * 14 mmv.glsl KILN_PRENORM's workgroup width */
            const int slot = mmv_slot(which);
            const uint32_t spec_data[15] = {sh->subgroup_size, slot >= 0 ? kiln_vk_mmv_rows(sh, slot) : 2u,
                                           8u * sh->subgroup_size, sh->mmc_bm, sh->mmc_bn,
                                           32u * (sh->mmc_bm / 64u) * (sh->mmc_bn / 32u), sh->mmc_skip,
                                           sh->mmc_rowvec, sh->mmc_stages, sh->mmc_kc, sh->mmc_mfirst,
                                           sh->attn_up, sh->swiglu_wg, sh->no_au4 ? 0u : 1u, sh->prenorm_wg};
            VkSpecializationMapEntry spec_entry[15];
            for (uint32_t i = 0; i < 15; i++) spec_entry[i] = (VkSpecializationMapEntry){i, 4 * i, 4};
            const VkSpecializationInfo spec = {15, spec_entry, sizeof spec_data, spec_data};
            ci.stage.pSpecializationInfo = &spec;
            ci.layout = sh->layout;
            if (sh->pipeline_stats) ci.flags |= VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR;
            r = vkCreateComputePipelines(sh->device, VK_NULL_HANDLE, 1, &ci, NULL, &sh->pipelines[which]);
            vkDestroyShaderModule(sh->device, mod, NULL);
            if (r != VK_SUCCESS) sh->pipelines[which] = VK_NULL_HANDLE;
            else if (sh->pipeline_stats) pipeline_stats_print(sh, sh->pipelines[which], shaders[which].name);
        }
        if (r != VK_SUCCESS) {
            st = kiln_vk_result(r, "creating a compute pipeline");
            st = kiln_error(st, "vulkan backend: cannot build the '%s' pipeline", shaders[which].name);
        }
    }
    *out = sh->pipelines[which];
    pthread_mutex_unlock(&sh->pipe_lock);
    return st;
}
