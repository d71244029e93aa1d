/* rope_kv_store + attention of a single token in one dispatch
 * (rope_kv_attention; see attn_dec.glsl) */
#version 450
#define KILN_ATTN_DEC_ROPE
#include "attn_dec.glsl"
