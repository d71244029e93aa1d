/* attn_dec_rope.comp with the first K/V loads before its prologue, for
 * contexts without splits (rope_kv_attention; see attn_dec.glsl
 * KILN_ATTN_DEC_EARLY) */
#version 450
#define KILN_ATTN_DEC_ROPE
#define KILN_ATTN_DEC_EARLY
#include "attn_dec.glsl"
