/*
 * test_server_chat.c - kiln-server's chat templates (examples/server/chat.c):
 * detection by signature substrings and the rendered text of each family.
 * Built without libmicrohttpd/cJSON: chat.c and util.c depend on libc only.
 */
#include <string.h>

#include "kiln.h"
#include "kt.h"

#include "../examples/server/chat.c"
#include "../examples/server/util.c"

static const srv_chat_msg conv[] = {
    {"system", "Be brief."},
    {"user", "Hi"},
    {"assistant", "Hello."},
    {"user", "Bye"},
};

static int render_is(srv_chat_kind k, const srv_chat_msg *m, size_t n, const char *want) {
    srv_buf b = {0};
    char err[128] = "";
    int rc = srv_chat_render(k, m, n, &b, err, sizeof err);
    int same = rc == 0 && b.data && !strcmp(b.data, want);
    if (!same) printf("  %s rendered (rc %d, %s):\n%s\n  wanted:\n%s\n", srv_chat_name(k), rc, err, b.data ? b.data : "", want);
    srv_buf_free(&b);
    return same;
}

static void test_detect(void) {
    KT_CHECK(srv_chat_detect(NULL) == SRV_CHAT_PLAIN);
    KT_CHECK(srv_chat_detect("") == SRV_CHAT_PLAIN);
    KT_CHECK(srv_chat_detect("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                             "message['content'] + '<|im_end|>\\n'}}{% endfor %}") == SRV_CHAT_CHATML);
    KT_CHECK(srv_chat_detect("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                             "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}") ==
             SRV_CHAT_LLAMA3);
    KT_CHECK(srv_chat_detect("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + "
                             "m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}"
                             "{% endfor %}") == SRV_CHAT_MISTRAL);
    KT_CHECK(srv_chat_detect("{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}") ==
             SRV_CHAT_UNKNOWN);
    KT_CHECK(srv_chat_from_name("chatml") == SRV_CHAT_CHATML);
    KT_CHECK(srv_chat_from_name("llama3") == SRV_CHAT_LLAMA3);
    KT_CHECK(srv_chat_from_name("mistral") == SRV_CHAT_MISTRAL);
    KT_CHECK(srv_chat_from_name("plain") == SRV_CHAT_PLAIN);
    KT_CHECK(srv_chat_from_name("jinja") == SRV_CHAT_UNKNOWN);
    KT_CHECK(srv_chat_from_name(NULL) == SRV_CHAT_UNKNOWN);
}

static void test_render(void) {
    KT_CHECK(render_is(SRV_CHAT_CHATML, conv, 4,
                       "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                       "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                       "<|im_start|>assistant\n"));
    KT_CHECK(render_is(SRV_CHAT_LLAMA3, conv, 4,
                       "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                       "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                       "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n"));
    KT_CHECK(render_is(SRV_CHAT_MISTRAL, conv, 4, "[INST] Be brief.\n\nHi [/INST] Hello.</s>[INST] Bye [/INST]"));
    KT_CHECK(render_is(SRV_CHAT_PLAIN, conv, 4, "system: Be brief.\nuser: Hi\nassistant: Hello.\nuser: Bye\nassistant:"));
    /* Mistral has no tool role; an unknown kind renders nothing */
    static const srv_chat_msg tool[] = {{"tool", "42"}};
    srv_buf b = {0};
    char err[128] = "";
    KT_CHECK(srv_chat_render(SRV_CHAT_MISTRAL, tool, 1, &b, err, sizeof err) == -2 && strstr(err, "tool"));
    KT_CHECK(srv_chat_render(SRV_CHAT_UNKNOWN, conv, 1, &b, err, sizeof err) == -2);
    srv_buf_free(&b);
    KT_CHECK(srv_live_bytes() == 0);
}

int main(void) {
    KT_RUN(test_detect);
    KT_RUN(test_render);
    return kt_finish();
}
