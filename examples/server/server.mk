# examples/server/server.mk - kiln-server, included by the Makefile.
# Built only when libmicrohttpd and cJSON (Debian: libmicrohttpd-dev,
# libcjson-dev) are found; otherwise `make` says it skipped it.
# It uses only include/kiln.h and links the shared library, like the other
# public examples.
SERVER_SRCS := $(sort $(wildcard examples/server/*.c))
SERVER_BIN := $(BUILD)/bin/kiln-server
SERVER_OBJS := $(SERVER_SRCS:%.c=$(BUILD)/obj/%.o)
SERVER_PKGS := libmicrohttpd libcjson
# Found by compiling their headers (pkg-config, when it knows them, only
# adds flags): the install test points pkg-config at a staging tree, and
# `make uninstall` must still see the same EXAMPLES as `make install`.
SERVER_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(SERVER_PKGS) 2>/dev/null)
SERVER_LIBS := $(or $(shell $(PKG_CONFIG) --libs $(SERVER_PKGS) 2>/dev/null),-lmicrohttpd -lcjson)
ifeq ($(shell printf '$(HASH)include <microhttpd.h>\n$(HASH)include <cjson/cJSON.h>\n' | \
	$(CC) $(SERVER_CFLAGS) $(CPPFLAGS) -E -x c - >/dev/null 2>&1 && echo y),y)
EXAMPLES += $(SERVER_BIN)
DEPS += $(SERVER_OBJS:.o=.d)
examples: $(SERVER_BIN)

$(BUILD)/obj/examples/server/%.o: examples/server/%.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(PUBLIC_CFLAGS) -D_GNU_SOURCE $(SERVER_CFLAGS) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(SERVER_BIN): $(SERVER_OBJS) $(BUILD)/libkiln.so
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $(SERVER_OBJS) -L$(BUILD) -lkiln -Wl,-rpath,'$$ORIGIN/..:$$ORIGIN/../lib' \
		$(LDFLAGS) $(SAN_LDFLAGS) $(SERVER_LIBS) $(LIBS)
else
PLUGIN_NOTES += kiln: skipping kiln-server: microhttpd.h or cjson/cJSON.h not found (Debian: apt-get install libmicrohttpd-dev libcjson-dev).
endif
