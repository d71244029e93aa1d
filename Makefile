# kiln - GNU make build. Targets:
#   make            libkiln.so.$(VERSION) (+ symlinks), libkiln.a, examples, plugins
#   make check      build and run the test suite (last line: "N passed, N failed")
#   make run        generate text with the bundled default model
#   make bench      kiln-bench on the bundled model
#   make install / uninstall (PREFIX, DESTDIR), make clean
#   make fuzz FUZZ_SECONDS=N      libFuzzer on the GGUF parser (clang)
#   make check SANITIZE=address,undefined
# Honours CC, CFLAGS, LDFLAGS, CPPFLAGS, PREFIX, DESTDIR.

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

CC ?= cc
CXX ?= c++
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PLUGINDIR ?= $(LIBDIR)/kiln
DESTDIR ?=

BUILD ?= build
CFLAGS ?= -O2 -g
WERROR ?=
SANITIZE ?=

KILN_CFLAGS := -std=c11 -Wall -Wextra -Wno-unused-parameter -fPIC -fvisibility=hidden \
	-D_GNU_SOURCE -DKILN_BUILD -Iinclude -Ilib -Ibackends/cpu \
	-DKILN_PLUGIN_DIR=\"$(PLUGINDIR)\"
ifneq ($(WERROR),)
KILN_CFLAGS += -Werror
endif
ifneq ($(SANITIZE),)
KILN_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_LDFLAGS := -fsanitize=$(SANITIZE)
BUILD := $(BUILD)/san
endif
LIBS := -lm -lpthread -ldl

LIB_SRCS := $(sort $(wildcard lib/*.c) $(wildcard backends/cpu/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
DEPS := $(LIB_OBJS:.o=.d)

SONAME := libkiln.so.$(VERSION_MAJOR)
SHLIB := $(BUILD)/libkiln.so.$(VERSION)
STLIB := $(BUILD)/libkiln.a

EXAMPLE_SRCS := $(sort $(wildcard examples/*.c))
EXAMPLES := $(EXAMPLE_SRCS:examples/%.c=$(BUILD)/bin/%)

TEST_SRCS := $(sort $(wildcard test/test_*.c))
TESTS := $(TEST_SRCS:test/%.c=$(BUILD)/test/%)
TEST_COMMON := $(wildcard test/kt.c)

.PHONY: all lib examples check test run bench install uninstall clean fuzz plugins
all: lib examples plugins

lib: $(SHLIB) $(BUILD)/libkiln.so $(STLIB)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(KILN_CFLAGS) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(SHLIB): $(LIB_OBJS) lib/kiln.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/kiln.map \
		-Wl,--no-undefined $(CFLAGS) $(LDFLAGS) $(SAN_LDFLAGS) -o $@ $(LIB_OBJS) $(LIBS)

$(BUILD)/libkiln.so: $(SHLIB)
	ln -sf libkiln.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

$(STLIB): $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

examples: $(EXAMPLES)

# Examples link the shared library (rpath to the build dir) so they exercise
# the exported ABI only.
$(BUILD)/bin/%: examples/%.c $(BUILD)/libkiln.so
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fvisibility=hidden,$(KILN_CFLAGS)) $(CPPFLAGS) $(CFLAGS) -o $@ $< \
		-L$(BUILD) -lkiln -Wl,-rpath,'$$ORIGIN/..' $(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

# Tests link the static library: they may use internal functions.
$(BUILD)/test/%: test/%.c $(TEST_COMMON) test/kt.h $(STLIB)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fvisibility=hidden,$(KILN_CFLAGS)) -Itest $(CPPFLAGS) $(CFLAGS) -o $@ $< \
		$(TEST_COMMON) $(STLIB) $(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

test: check
check: all $(TESTS)
	@BUILD=$(BUILD) CC="$(CC)" SANITIZE="$(SANITIZE)" sh test/run.sh $(TESTS)

DEFAULT_MODEL := models/tiny-target-q4_k_m.gguf
run: all
	$(BUILD)/bin/kiln-run -m $(DEFAULT_MODEL) -p "In the beginning" -n 64

bench: all
	$(BUILD)/bin/kiln-bench -m $(DEFAULT_MODEL)

FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
fuzz:
	@mkdir -p $(BUILD)/fuzz
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Ilib -D_GNU_SOURCE \
		-o $(BUILD)/fuzz/gguf_fuzz test/fuzz/gguf_fuzz.c lib/gguf.c lib/types.c lib/status.c lib/alloc.c -lm
	sh test/fuzz/run.sh $(BUILD)/fuzz/gguf_fuzz $(FUZZ_SECONDS)

kiln.pc: pkgconfig/kiln.pc.in
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $(BUILD)/kiln.pc

install: all kiln.pc
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(PLUGINDIR)
	install -m 644 include/kiln.h include/kiln_backend.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf libkiln.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libkiln.so
	install -m 644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	install -m 644 $(BUILD)/kiln.pc $(DESTDIR)$(LIBDIR)/pkgconfig/
	for p in $(PLUGINS); do install -m 755 $$p $(DESTDIR)$(PLUGINDIR)/; done
	for e in $(EXAMPLES); do install -m 755 $$e $(DESTDIR)$(BINDIR)/; done

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/kiln.h $(DESTDIR)$(INCLUDEDIR)/kiln_backend.h
	rm -f $(DESTDIR)$(LIBDIR)/libkiln.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	rm -f $(DESTDIR)$(LIBDIR)/libkiln.so $(DESTDIR)$(LIBDIR)/libkiln.a
	rm -f $(DESTDIR)$(LIBDIR)/pkgconfig/kiln.pc
	rm -rf $(DESTDIR)$(PLUGINDIR)
	for e in $(EXAMPLES); do rm -f $(DESTDIR)$(BINDIR)/$$(basename $$e); done

# Optional backend plugins (detected; never a failed build).
PLUGINS :=
plugins:
	@command -v nvcc >/dev/null 2>&1 || echo "kiln: nvcc not found, skipping the CUDA backend"

clean:
	rm -rf build

-include $(DEPS)
