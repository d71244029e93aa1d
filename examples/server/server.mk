# examples/server/server.mk - kiln-server, included by the Makefile.
# Built only when libmicrohttpd and cJSON (Debian: libmicrohttpd-dev,
# libcjson-dev) are found by pkg-config; otherwise `make` says it skipped it.
# It uses only include/kiln.h and links the shared library, like the other
# public examples.
SERVER_SRCS := $(sort $(wildcard examples/server/*.c))
SERVER_BIN := $(BUILD)/bin/kiln-server
SERVER_OBJS := $(SERVER_SRCS:%.c=$(BUILD)/obj/%.o)
SERVER_PKGS := libmicrohttpd libcjson
ifeq ($(shell $(PKG_CONFIG) --exists $(SERVER_PKGS) 2>/dev/null && echo y),y)
SERVER_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(SERVER_PKGS))
SERVER_LIBS := $(shell $(PKG_CONFIG) --libs $(SERVER_PKGS))
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
PLUGIN_NOTES += kiln: skipping kiln-server: libmicrohttpd and libcjson not found by pkg-config (Debian: apt-get install libmicrohttpd-dev libcjson-dev).
endif
