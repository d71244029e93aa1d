/*
 * chat.c - chat templates without a Jinja engine.
 *
 * A GGUF model's tokenizer.chat_template is a Jinja program; running it
 * would need a Jinja interpreter. The common families are recognised
 * instead by substrings that only their templates contain, and rendered
 * here in C to the text those templates produce for a plain list of
 * messages with add_generation_prompt = true (the BOS token excepted: the
 * caller tokenizes with KILN_TOKENIZE_ADD_BOS, as the model asks).
 *
 * Depends on util.c only (the unit test builds it without the HTTP parts).
 */
#include <stdio.h>
#include <string.h>

#include "server.h"

srv_chat_kind srv_chat_detect(const char *t) {
    if (!t || !*t) return SRV_CHAT_PLAIN;
    /* Llama 3 first: its headers are unambiguous, and some ChatML-like
     * templates mention [INST] in comments. */
    if (strstr(t, "<|start_header_id|>") && strstr(t, "<|end_header_id|>")) return SRV_CHAT_LLAMA3;
    if (strstr(t, "<|im_start|>") && strstr(t, "<|im_end|>")) return SRV_CHAT_CHATML;
    if (strstr(t, "[INST]") && strstr(t, "[/INST]")) return SRV_CHAT_MISTRAL;
    return SRV_CHAT_UNKNOWN;
}

static const struct {
    const char *name;
    srv_chat_kind kind;
} chat_names[] = {
    {"chatml", SRV_CHAT_CHATML},
    {"llama3", SRV_CHAT_LLAMA3},
    {"mistral", SRV_CHAT_MISTRAL},
    {"plain", SRV_CHAT_PLAIN},
};

srv_chat_kind srv_chat_from_name(const char *name) {
    for (size_t i = 0; name && i < sizeof chat_names / sizeof chat_names[0]; i++)
        if (!strcmp(name, chat_names[i].name)) return chat_names[i].kind;
    return SRV_CHAT_UNKNOWN;
}

const char *srv_chat_name(srv_chat_kind k) {
    for (size_t i = 0; i < sizeof chat_names / sizeof chat_names[0]; i++)
        if (chat_names[i].kind == k) return chat_names[i].name;
    return "unknown";
}

static int render_chatml(const srv_chat_msg *m, size_t n, srv_buf *o) {
    for (size_t i = 0; i < n; i++)
        if (srv_buf_printf(o, "<|im_start|>%s\n%s<|im_end|>\n", m[i].role, m[i].content)) return -1;
    return srv_buf_puts(o, "<|im_start|>assistant\n");
}

static int render_llama3(const srv_chat_msg *m, size_t n, srv_buf *o) {
    for (size_t i = 0; i < n; i++)
        if (srv_buf_printf(o, "<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>", m[i].role, m[i].content))
            return -1;
    return srv_buf_puts(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Mistral has no system role: a system message is put in front of the
 * next user message, as Mistral's own templates do. */
static int render_mistral(const srv_chat_msg *m, size_t n, srv_buf *o, char *err, size_t err_cap) {
    const char *system = NULL;
    int open = 0; /* the last message was a user turn ([INST] ... [/INST] written) */
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role;
        if (!strcmp(role, "system")) {
            system = m[i].content;
        } else if (!strcmp(role, "user")) {
            if (system ? srv_buf_printf(o, "[INST] %s\n\n%s [/INST]", system, m[i].content)
                       : srv_buf_printf(o, "[INST] %s [/INST]", m[i].content))
                return -1;
            system = NULL;
            open = 1;
        } else if (!strcmp(role, "assistant")) {
            if (srv_buf_printf(o, "%s%s</s>", open ? " " : "", m[i].content)) return -1;
            open = 0;
        } else {
            snprintf(err, err_cap, "the mistral chat template has no role '%s' (system, user, assistant)", role);
            return -2;
        }
    }
    if (system && srv_buf_printf(o, "[INST] %s [/INST]", system)) return -1;
    return 0;
}

static int render_plain(const srv_chat_msg *m, size_t n, srv_buf *o) {
    for (size_t i = 0; i < n; i++)
        if (srv_buf_printf(o, "%s: %s\n", m[i].role, m[i].content)) return -1;
    return srv_buf_puts(o, "assistant:");
}

int srv_chat_render(srv_chat_kind k, const srv_chat_msg *msgs, size_t n, srv_buf *out, char *err,
                    size_t err_cap) {
    switch (k) {
    case SRV_CHAT_CHATML: return render_chatml(msgs, n, out);
    case SRV_CHAT_LLAMA3: return render_llama3(msgs, n, out);
    case SRV_CHAT_MISTRAL: return render_mistral(msgs, n, out, err, err_cap);
    case SRV_CHAT_PLAIN: return render_plain(msgs, n, out);
    default: break;
    }
    snprintf(err, err_cap, "the model's chat template is not one kiln-server can render");
    return -2;
}
