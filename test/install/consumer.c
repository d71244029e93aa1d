/*
 * consumer.c - the install test's application (test/install.sh): built
 * against an installed kiln with nothing but pkg-config's flags, once
 * against the shared library and once against the static one.
 * Prints kiln_version() and kiln_status_str(KILN_E_FORMAT) and checks them
 * against the installed header. Exit 0 on success.
 */
#include <stdio.h>
#include <string.h>

#include <kiln.h>

#define STR2(x) #x
#define STR(x) STR2(x)

int main(void) {
    const char *want = STR(KILN_VERSION_MAJOR) "." STR(KILN_VERSION_MINOR) "." STR(KILN_VERSION_PATCH);
    const char *v = kiln_version();
    const char *s = kiln_status_str(-3);
    printf("kiln_version() = %s\n", v);
    printf("kiln_status_str(-3) = %s\n", s);
    int ok = strcmp(v, want) == 0 && kiln_version_number() == KILN_VERSION_NUMBER;
    ok = ok && s && strcmp(s, kiln_status_str(KILN_E_FORMAT)) == 0 &&
         strcmp(s, "unknown status") != 0 && strcmp(kiln_status_str(KILN_OK), "ok") == 0;
    if (!ok) printf("FAIL: expected version %s and a description of KILN_E_FORMAT\n", want);
    return ok ? 0 : 1;
}
