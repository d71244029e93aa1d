# kiln - GNU make build. Targets:
#   make            libkiln.so.$(VERSION) (+ symlinks), libkiln.a, examples, plugins
#   make check      build and run the test suite (last line: "N passed, N failed")
#   make run        generate text with the bundled default model
#   make bench      kiln-bench on the bundled model
#   make install / uninstall (PREFIX, DESTDIR), make clean
#   make fuzz FUZZ_SECONDS=N      libFuzzer on every test/fuzz/*_fuzz.c (clang)
#   make check SANITIZE=address,undefined    everything in $(BUILD)/san
#   make abi-update                 regenerate test/abi/ (a deliberate API change)
# Honours CC, CXX, CFLAGS, CPPFLAGS, LDFLAGS, PREFIX, DESTDIR, WERROR=1.
#
# Changing any compile flag (CFLAGS, WERROR, PREFIX, which is compiled in as
# the plugin directory, ...) rebuilds what depends on it: $(BUILD)/.flags
# records the flags of the last build.

VERSION_MAJOR := 0
VERSION_MINOR := 1
VERSION_PATCH := 0
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

CC ?= cc
CXX ?= c++
AR ?= ar
PKG_CONFIG ?= pkg-config
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PLUGINDIR ?= $(LIBDIR)/kiln
# the bundled default model (kiln-run finds it at bin/../share/kiln/models)
MODELDIR ?= $(PREFIX)/share/kiln/models
# the Python binding (bindings/python/kiln; finds the library at ../../../../lib)
PYTHONDIR ?= $(PREFIX)/share/kiln/python
DESTDIR ?=

BUILD ?= build
CFLAGS ?= -O2 -g
WERROR ?=
SANITIZE ?=

# BUILDROOT is the folder the user chose; BUILD is where this configuration
# builds (a sanitized build never mixes its objects with a plain one).
BUILDROOT := $(BUILD)
ifneq ($(SANITIZE),)
override BUILD := $(BUILDROOT)/san
endif

WARN_CFLAGS := -Wall -Wextra -Wno-unused-parameter
ifneq ($(WERROR),)
WARN_CFLAGS += -Werror
endif
SAN_CFLAGS :=
SAN_LDFLAGS :=
# The shared library must resolve every symbol itself, except in a
# sanitized build: clang leaves the sanitizer runtime to the executable.
NO_UNDEFINED := -Wl,--no-undefined
ifneq ($(SANITIZE),)
SAN_CFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_LDFLAGS := -fsanitize=$(SANITIZE)
NO_UNDEFINED :=
endif

# The library and its built-in CPU backend.
KILN_CFLAGS := -std=c11 $(WARN_CFLAGS) -fPIC -fvisibility=hidden \
	-D_GNU_SOURCE -DKILN_BUILD -Iinclude -Ilib -Ibackends/cpu \
	-DKILN_PLUGIN_DIR=\"$(PLUGINDIR)\" $(SAN_CFLAGS)
# Tests and static examples may use internal headers.
INTERNAL_CFLAGS := -std=c11 $(WARN_CFLAGS) -D_GNU_SOURCE -Iinclude -Ilib -Ibackends/cpu \
	$(SAN_CFLAGS)
# Everything else sees only the public headers, as a real caller does.
PUBLIC_CFLAGS := -std=c11 $(WARN_CFLAGS) -Iinclude $(SAN_CFLAGS)
LIBS := -lm -lpthread -ldl

LIB_SRCS := $(sort $(wildcard lib/*.c) $(wildcard backends/cpu/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)

SONAME := libkiln.so.$(VERSION_MAJOR)
SHLIB := $(BUILD)/libkiln.so.$(VERSION)
STLIB := $(BUILD)/libkiln.a

# Examples: one program per examples/*.c. Those whose first line contains
# KILN_EXAMPLE_STATIC use internal APIs and link libkiln.a (with -Ilib); all
# others link the shared library and see only include/.
EXAMPLE_SRCS := $(sort $(wildcard examples/*.c))
STATIC_EXAMPLE_SRCS := $(foreach f,$(EXAMPLE_SRCS),\
	$(if $(findstring KILN_EXAMPLE_STATIC,$(shell head -n 1 $(f))),$(f)))
SHARED_EXAMPLE_SRCS := $(filter-out $(STATIC_EXAMPLE_SRCS),$(EXAMPLE_SRCS))
STATIC_EXAMPLES := $(STATIC_EXAMPLE_SRCS:examples/%.c=$(BUILD)/bin/%)
SHARED_EXAMPLES := $(SHARED_EXAMPLE_SRCS:examples/%.c=$(BUILD)/bin/%)
EXAMPLES := $(STATIC_EXAMPLES) $(SHARED_EXAMPLES)

# Tests: test/test_*.c link libkiln.a (they may use internal functions),
# except test/test_abi_*.c, which test the exported ABI and so link the
# shared library. Shell tests are test/*.sh (test/run.sh is the runner).
TEST_SRCS := $(sort $(wildcard test/test_*.c))
ABI_TEST_SRCS := $(filter test/test_abi_%,$(TEST_SRCS))
TESTS := $(TEST_SRCS:test/%.c=$(BUILD)/test/%)
ABI_TESTS := $(ABI_TEST_SRCS:test/%.c=$(BUILD)/test/%)
STATIC_TESTS := $(filter-out $(ABI_TESTS),$(TESTS))
TEST_SCRIPTS := $(filter-out test/run.sh,$(sort $(wildcard test/*.sh)))
TEST_COMMON := $(wildcard test/kt.c)

# The "old binary" ABI check: test/abi/consumer.c built against each header
# snapshot test/abi/kiln-X.Y.Z.h. It is rebuilt only when its source or the
# snapshot changes, never because the library changed (see docs/ARCHITECTURE.md).
ABI_SNAPSHOTS := $(sort $(wildcard test/abi/kiln-*.h))
ABI_CONSUMERS := $(ABI_SNAPSHOTS:test/abi/kiln-%.h=$(BUILD)/abi/consumer-%)

DEPS := $(LIB_OBJS:.o=.d) $(EXAMPLE_SRCS:examples/%.c=$(BUILD)/obj/examples/%.d) $(TESTS:=.d)

FLAGS_STAMP := $(BUILD)/.flags
FLAGS_TEXT := $(CC) $(CXX) | $(KILN_CFLAGS) | $(CPPFLAGS) $(CFLAGS) | $(LDFLAGS) $(SAN_LDFLAGS)

.PHONY: all lib examples plugins check test run bench install uninstall clean fuzz \
	abi-update FORCE
all: lib examples plugins

lib: $(SHLIB) $(BUILD)/libkiln.so $(STLIB)

# Rewritten only when the flags differ, so an unchanged configuration
# rebuilds nothing (make compares its time stamp with the objects').
$(FLAGS_STAMP): FORCE
	@mkdir -p $(@D)
	@printf '%s\n' '$(FLAGS_TEXT)' | cmp -s - $@ || printf '%s\n' '$(FLAGS_TEXT)' > $@

$(BUILD)/obj/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(KILN_CFLAGS) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(SHLIB): $(LIB_OBJS) lib/kiln.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/kiln.map \
		$(NO_UNDEFINED) $(CFLAGS) $(LDFLAGS) $(SAN_LDFLAGS) -o $@ $(LIB_OBJS) $(LIBS)

# Both symlinks come from one rule so that -j never sees half of them.
$(BUILD)/libkiln.so: $(SHLIB)
	ln -sf libkiln.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

$(STLIB): $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

examples: $(EXAMPLES)

# Shared examples find the library beside them in the build tree
# ($ORIGIN/..) and in an installed tree ($ORIGIN/../lib).
$(SHARED_EXAMPLES): $(BUILD)/bin/%: examples/%.c $(BUILD)/libkiln.so $(FLAGS_STAMP)
	@mkdir -p $(@D) $(BUILD)/obj/examples
	$(CC) $(PUBLIC_CFLAGS) $(CPPFLAGS) $(CFLAGS) -MMD -MP -MF $(BUILD)/obj/examples/$*.d -o $@ $< \
		-L$(BUILD) -lkiln -Wl,-rpath,'$$ORIGIN/..:$$ORIGIN/../lib' $(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

$(STATIC_EXAMPLES): $(BUILD)/bin/%: examples/%.c $(STLIB) $(FLAGS_STAMP)
	@mkdir -p $(@D) $(BUILD)/obj/examples
	$(CC) $(INTERNAL_CFLAGS) $(CPPFLAGS) $(CFLAGS) -MMD -MP -MF $(BUILD)/obj/examples/$*.d -o $@ $< \
		$(STLIB) $(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

# (every test header: the depfile only records test/kt.c's, the last source)
$(STATIC_TESTS): $(BUILD)/test/%: test/%.c $(TEST_COMMON) $(wildcard test/*.h) $(STLIB) $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(INTERNAL_CFLAGS) -Itest $(CPPFLAGS) $(CFLAGS) -MMD -MP -MF $@.d -o $@ $< \
		$(TEST_COMMON) $(STLIB) $(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

$(ABI_TESTS): $(BUILD)/test/%: test/%.c $(TEST_COMMON) test/kt.h $(BUILD)/libkiln.so $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(PUBLIC_CFLAGS) -Itest $(CPPFLAGS) $(CFLAGS) -MMD -MP -MF $@.d -o $@ $< \
		$(TEST_COMMON) -L$(BUILD) -Wl,--no-as-needed -lkiln -Wl,-rpath,'$$ORIGIN/..' \
		$(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

# The library is an order-only prerequisite: the binary stays "old". It
# refers to the API weakly (test/abi/consumer.c), hence --no-as-needed.
$(BUILD)/abi/consumer-%: test/abi/consumer.c test/abi/kiln-%.h | $(BUILD)/libkiln.so
	@mkdir -p $(BUILD)/abi/include-$*
	cp test/abi/kiln-$*.h $(BUILD)/abi/include-$*/kiln.h
	$(CC) -std=c99 $(WARN_CFLAGS) $(SAN_CFLAGS) $(CPPFLAGS) $(CFLAGS) -I$(BUILD)/abi/include-$* \
		-o $@ test/abi/consumer.c -L$(BUILD) -Wl,--no-as-needed -lkiln $(LDFLAGS) $(SAN_LDFLAGS) $(LIBS)

# Environment of every test (C and shell). Tests run from the repository root.
TEST_ENV := KILN_BUILD='$(BUILD)' KILN_BUILD_ROOT='$(BUILDROOT)' KILN_VERSION='$(VERSION)' \
	KILN_PREFIX='$(PREFIX)' KILN_LIBDIR='$(LIBDIR)' KILN_INCLUDEDIR='$(INCLUDEDIR)' \
	KILN_BINDIR='$(BINDIR)' KILN_PLUGINDIR='$(PLUGINDIR)' \
	CC='$(CC)' CXX='$(CXX)' CFLAGS='$(CFLAGS)' SANITIZE='$(SANITIZE)' \
	PKG_CONFIG='$(PKG_CONFIG)'
ifneq ($(SANITIZE),)
TEST_ENV += ASAN_OPTIONS="detect_leaks=1:abort_on_error=0$${ASAN_OPTIONS:+:$$ASAN_OPTIONS}" \
	UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1$${UBSAN_OPTIONS:+:$$UBSAN_OPTIONS}"
endif

test: check
# '+' (and $(MAKE)) mark the recipe recursive: shell tests run make install.
check: all $(TESTS) $(ABI_CONSUMERS)
	+@$(TEST_ENV) MAKE='$(MAKE)' bash test/run.sh $(TESTS) $(TEST_SCRIPTS)

DEFAULT_MODEL := models/tiny-target-q4_k_m.gguf
run: all
	$(BUILD)/bin/kiln-run -m $(DEFAULT_MODEL) -p "In the beginning" -n 64

bench: all
	$(BUILD)/bin/kiln-bench -m $(DEFAULT_MODEL)

# ---- fuzzing (clang's libFuzzer) -------------------------------------------
# The whole library is rebuilt with coverage + ASan/UBSan into
# $(BUILDROOT)/fuzz; each test/fuzz/NAME_fuzz.c becomes one fuzzer that runs
# FUZZ_SECONDS through test/fuzz/run.sh (BINARY SECONDS) when that exists.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_BUILD := $(BUILDROOT)/fuzz
FUZZ_SRCS := $(sort $(wildcard test/fuzz/*_fuzz.c))
FUZZ_BINS := $(FUZZ_SRCS:test/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_OBJS := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_CFLAGS := -std=c11 -g -O1 -Wall -Wextra -Wno-unused-parameter -fPIC -D_GNU_SOURCE \
	-DKILN_BUILD -DKILN_FUZZ -Iinclude -Ilib -Ibackends/cpu -DKILN_PLUGIN_DIR=\"$(PLUGINDIR)\" \
	-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
DEPS += $(FUZZ_OBJS:.o=.d)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/libkiln-fuzz.a: $(FUZZ_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(FUZZ_BINS): $(FUZZ_BUILD)/%: test/fuzz/%.c $(FUZZ_BUILD)/libkiln-fuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< \
		$(FUZZ_BUILD)/libkiln-fuzz.a $(LIBS)

fuzz: $(FUZZ_BINS)
	@if [ -z "$(FUZZ_BINS)" ]; then echo "kiln: no fuzz harnesses (test/fuzz/*_fuzz.c) yet"; fi
	@set -e; for f in $(FUZZ_BINS); do \
		echo "== fuzzing $$f for $(FUZZ_SECONDS) s"; \
		if [ -f test/fuzz/run.sh ]; then sh test/fuzz/run.sh $$f $(FUZZ_SECONDS); \
		else $$f -max_total_time=$(FUZZ_SECONDS); fi; \
	done

# ---- optional backend plugins -------------------------------------------------
# A plugin is a shared object the core dlopens on request; it is built only
# when its toolchain is found, and a missing toolchain is never an error.
# Hook: PLUGINS lists what `make` builds and `make install` installs into
# $(PLUGINDIR); backends/NAME/plugin.mk, if present, is included last and may
# add its own plugin (PLUGINS += $(BUILD)/libkiln-NAME.so) with its rules, or
# override the variables below (NVCCFLAGS, CUDA_LIBS, VULKAN_LIBS, ...).
PLUGINS :=
PLUGIN_NOTES :=
COMMA := ,
PLUGIN_CFLAGS := -std=c11 $(WARN_CFLAGS) -fPIC -fvisibility=hidden -D_GNU_SOURCE \
	-DKILN_BUILD -Iinclude -Ilib $(SAN_CFLAGS)

# CUDA: backends/cuda/*.cu (nvcc) and *.c (CC) -> libkiln-cuda.so.
NVCC ?= nvcc
NVCCFLAGS ?= -O2 -g -std=c++17
CUDA_LIBS ?= -lcublas
CUDA_CU_SRCS := $(sort $(wildcard backends/cuda/*.cu))
CUDA_C_SRCS := $(sort $(wildcard backends/cuda/*.c))
ifneq ($(strip $(CUDA_CU_SRCS) $(CUDA_C_SRCS)),)
ifneq ($(shell command -v $(NVCC) 2>/dev/null),)
PLUGINS += $(BUILD)/libkiln-cuda.so
CUDA_OBJS := $(CUDA_CU_SRCS:%.cu=$(BUILD)/obj/%.cu.o) $(CUDA_C_SRCS:%.c=$(BUILD)/obj/%.o)
DEPS += $(CUDA_CU_SRCS:%.cu=$(BUILD)/obj/%.cu.d)
$(BUILD)/obj/%.cu.o: %.cu $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -Xcompiler -fPIC,-fvisibility=hidden -DKILN_BUILD -Iinclude -Ilib \
		-MD -MP -MF $(@:.o=.d) -c $< -o $@
# nvcc's -Xcompiler splits its argument at commas: one flag per sanitizer.
NVCC_SAN_LDFLAGS := $(foreach s,$(subst $(COMMA), ,$(SANITIZE)),-Xcompiler -fsanitize=$(s))
$(BUILD)/libkiln-cuda.so: $(CUDA_OBJS)
	$(NVCC) -shared -Xlinker -soname=libkiln-cuda.so $(NVCC_SAN_LDFLAGS) \
		-o $@ $(CUDA_OBJS) $(CUDA_LIBS) $(LIBS)
else
PLUGIN_NOTES += kiln: skipping the CUDA backend: nvcc not found.
endif
endif

# Vulkan: backends/vulkan/*.c + shaders backends/vulkan/shaders/*.comp
# compiled by glslc to SPIR-V and embedded as uint32_t arrays
# kiln_vk_spv_NAME[] / kiln_vk_spv_NAME_size in a generated C file.
HASH := \#
GLSLC ?= glslc
GLSLCFLAGS ?= -O --target-env=vulkan1.2
VULKAN_LIBS ?= -lvulkan
VULKAN_C_SRCS := $(sort $(wildcard backends/vulkan/*.c))
VULKAN_SHADERS := $(sort $(wildcard backends/vulkan/shaders/*.comp))
ifneq ($(strip $(VULKAN_C_SRCS)),)
ifeq ($(shell command -v $(GLSLC) 2>/dev/null),)
PLUGIN_NOTES += kiln: skipping the Vulkan backend: glslc not found.
else ifneq ($(shell printf '$(HASH)include <vulkan/vulkan.h>\n' | $(CC) $(CPPFLAGS) -E -x c - >/dev/null 2>&1 && echo y),y)
PLUGIN_NOTES += kiln: skipping the Vulkan backend: vulkan/vulkan.h not found.
else
PLUGINS += $(BUILD)/libkiln-vulkan.so
VULKAN_SPV := $(VULKAN_SHADERS:backends/vulkan/shaders/%.comp=$(BUILD)/vulkan/%.spv)
VULKAN_OBJS := $(VULKAN_C_SRCS:%.c=$(BUILD)/vulkan/obj/%.o) $(BUILD)/vulkan/shaders.o
DEPS += $(VULKAN_OBJS:.o=.d)
$(BUILD)/vulkan/%.spv: backends/vulkan/shaders/%.comp
	@mkdir -p $(@D)
	$(GLSLC) $(GLSLCFLAGS) -o $@ $<
$(BUILD)/vulkan/shaders.c: $(VULKAN_SPV)
	@{ echo '/* generated by the Makefile from backends/vulkan/shaders: do not edit */'; \
	  echo '#include <stddef.h>'; echo '#include <stdint.h>'; \
	  for f in $(VULKAN_SPV); do n=$$(basename $$f .spv | tr -c 'A-Za-z0-9_\n' '_'); \
	    echo "const uint32_t kiln_vk_spv_$$n[] = {"; \
	    od -An -v -tx4 $$f | sed -e 's/\([0-9a-f]\{8\}\)/0x\1,/g'; \
	    echo '};'; echo "const size_t kiln_vk_spv_$${n}_size = sizeof kiln_vk_spv_$$n;"; \
	  done; } > $@
$(BUILD)/vulkan/obj/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) -I$(BUILD)/vulkan $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/vulkan/shaders.o: $(BUILD)/vulkan/shaders.c
	$(CC) $(PLUGIN_CFLAGS) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/libkiln-vulkan.so: $(VULKAN_OBJS)
	$(CC) -shared -Wl,-soname,libkiln-vulkan.so $(CFLAGS) $(LDFLAGS) $(SAN_LDFLAGS) \
		-o $@ $(VULKAN_OBJS) $(VULKAN_LIBS) $(LIBS)
endif
endif

-include $(sort $(wildcard backends/*/plugin.mk))
# kiln-server (examples/server): built when its HTTP and JSON libraries are found
-include examples/server/server.mk

plugins: $(PLUGINS)
	$(if $(strip $(PLUGIN_NOTES)),@echo '$(strip $(PLUGIN_NOTES))')

# ---- install -------------------------------------------------------------------
# kiln.pc depends on PREFIX and friends, so it is regenerated (only when its
# text changes) on every run.
$(BUILD)/kiln.pc: pkgconfig/kiln.pc.in FORCE
	@mkdir -p $(@D)
	@sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; fi

install: all $(BUILD)/kiln.pc
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR)
	install -m 644 include/kiln.h include/kiln_backend.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 755 $(SHLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf libkiln.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libkiln.so
	install -m 644 $(STLIB) $(DESTDIR)$(LIBDIR)/
	install -m 644 $(BUILD)/kiln.pc $(DESTDIR)$(LIBDIR)/pkgconfig/
	$(if $(strip $(PLUGINS)),install -d $(DESTDIR)$(PLUGINDIR))
	$(if $(strip $(PLUGINS)),install -m 755 $(PLUGINS) $(DESTDIR)$(PLUGINDIR)/)
	$(if $(strip $(EXAMPLES)),install -m 755 $(EXAMPLES) $(DESTDIR)$(BINDIR)/)
	install -d $(DESTDIR)$(MODELDIR)
	install -m 644 $(DEFAULT_MODEL) $(DESTDIR)$(MODELDIR)/
	install -d $(DESTDIR)$(PYTHONDIR)/kiln
	install -m 644 bindings/python/kiln/*.py $(DESTDIR)$(PYTHONDIR)/kiln/

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/kiln.h $(DESTDIR)$(INCLUDEDIR)/kiln_backend.h
	rm -f $(DESTDIR)$(LIBDIR)/libkiln.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	rm -f $(DESTDIR)$(LIBDIR)/libkiln.so $(DESTDIR)$(LIBDIR)/libkiln.a
	rm -f $(DESTDIR)$(LIBDIR)/pkgconfig/kiln.pc
	rm -f $(DESTDIR)$(PLUGINDIR)/libkiln-*.so
	-rmdir $(DESTDIR)$(PLUGINDIR) 2>/dev/null || true
	$(if $(strip $(EXAMPLES)),rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(EXAMPLES))))
	rm -f $(DESTDIR)$(MODELDIR)/$(notdir $(DEFAULT_MODEL))
	rm -f $(addprefix $(DESTDIR)$(PYTHONDIR)/kiln/,$(notdir $(wildcard bindings/python/kiln/*.py)))
	rm -rf $(DESTDIR)$(PYTHONDIR)/kiln/__pycache__
	-rmdir $(DESTDIR)$(PYTHONDIR)/kiln $(DESTDIR)$(PYTHONDIR) 2>/dev/null || true
	-rmdir $(DESTDIR)$(MODELDIR) $(DESTDIR)$(PREFIX)/share/kiln 2>/dev/null || true

# ---- ABI baseline ----------------------------------------------------------------
# Regenerates test/abi/kiln.symbols, test/abi/libkiln.abi and the header
# snapshot of this version, for a deliberate API change (see test/abi/update.sh).
abi-update: $(SHLIB)
	KILN_BUILD='$(BUILD)' KILN_VERSION='$(VERSION)' bash test/abi/update.sh

clean:
	rm -rf $(BUILDROOT)

-include $(DEPS)
