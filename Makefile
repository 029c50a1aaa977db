# Fathom - one GNU make, no generator.
#   make            library, CLI, plugins          (build/)
#   make test       Check suites                   (installs deps first if missing)
#   make check      the same suites under ASan+UBSan (build/asan/)
#   make demo       the main job: every backend against the golden model
#   make bench      the benchmark commands (docs/bench.md)
#   make install PREFIX=/usr/local
#
# Source conventions: core/src/*.c -> libfathom; plugins/<name>/*.c ->
# build/plugins/libfathom-<name>.so (extra link flags in plugins/<name>/plugin.mk
# as LIBS_<name>); tools/*.c -> build/fathom; tests/test_*.c -> one Check
# executable each. Files named *_avx2.c, *_avx512.c, *_avx512bf16.c get their
# ISA flags; everything else is plain x86-64 so run-time dispatch is safe.

CC      ?= cc
PREFIX  ?= /usr/local
B       ?= build
OPT     ?= -O2 -g
SAN     ?=
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -fPIC -fvisibility=hidden \
              -Icore/include -Icore/src $(OPT) $(SAN) -MMD -MP
LDFLAGS_BASE = $(SAN)
DEPS_OK := $(B)/.deps-ok

ISA_avx2       = -mavx2 -mfma -mf16c
ISA_avx512     = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
ISA_avx512bf16 = $(ISA_avx512) -mavx512bf16
isaflags = $(if $(filter %_avx512bf16.c,$1),$(ISA_avx512bf16),$(if $(filter %_avx512.c,$1),$(ISA_avx512),$(if $(filter %_avx2.c,$1),$(ISA_avx2))))

CORE_SRC  := $(wildcard core/src/*.c)
CORE_OBJ  := $(CORE_SRC:%.c=$(B)/obj/%.o)
CORE_LIBS := -lm -ldl -lpthread -lcjson -lhwloc
PLUGINS   := $(notdir $(patsubst %/,%,$(dir $(wildcard plugins/*/*.c))))
PLUGINS   := $(sort $(PLUGINS))
PLUGIN_SO := $(PLUGINS:%=$(B)/plugins/libfathom-%.so)
TOOL_SRC  := $(wildcard tools/*.c) $(wildcard tools/bench/*.c)
TOOL_OBJ  := $(TOOL_SRC:%.c=$(B)/obj/%.o)
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(B)/tests/%)
TEST_COMMON := $(wildcard tests/common/*.c)
TEST_COMMON_OBJ := $(TEST_COMMON:%.c=$(B)/obj/%.o)
-include $(wildcard plugins/*/plugin.mk)

.PHONY: all test check demo bench roofline install clean deps $(B)/fathom.pc
all: $(B)/libfathom.so $(B)/libfathom.a $(B)/fathom $(PLUGIN_SO) $(B)/fathom.pc

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(call isaflags,$<) $(CFLAGS_EXTRA) -c $< -o $@

$(B)/libfathom.so: $(CORE_OBJ)
	$(CC) -shared $(LDFLAGS_BASE) -o $@ $^ $(CORE_LIBS) -Wl,-soname,libfathom.so.0
$(B)/libfathom.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The CLI and the tests link the core statically: they also use internal pieces
# (safetensors, config). Plugins are found beside the executable (build/plugins).
$(B)/fathom: $(TOOL_OBJ) $(B)/libfathom.a
	$(CC) $(LDFLAGS_BASE) -o $@ $(TOOL_OBJ) $(B)/libfathom.a $(CORE_LIBS) $(LIBS_TOOLS)

define plugin_rule
$(B)/plugins/libfathom-$(1).so: $(patsubst %.c,$(B)/obj/%.o,$(wildcard plugins/$(1)/*.c))
	@mkdir -p $$(dir $$@)
	$$(CC) -shared $$(LDFLAGS_BASE) -o $$@ $$^ -lm -lpthread $$(LIBS_$(1))
endef
$(foreach p,$(PLUGINS),$(eval $(call plugin_rule,$(p))))

# Test doubles: the stub plugin built broken on purpose (the loader must refuse each).
BAD_PLUGINS := badabi badsize noentry initfail unavail devmem
BAD_SO := $(BAD_PLUGINS:%=$(B)/tests/plugins/libfathom-%.so)
$(B)/tests/plugins/libfathom-%.so: plugins/stub/stub.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -DSTUB_VARIANT_$* -DSTUB_NAME='"$*"' -shared $(LDFLAGS_BASE) -o $@ $< -lm

$(B)/tests/%: tests/%.c $(TEST_COMMON_OBJ) $(B)/libfathom.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -DFM_TEST_DATA='"$(CURDIR)/tests/data"' -o $@ $< $(TEST_COMMON_OBJ) \
	    $(B)/libfathom.a $(CORE_LIBS) $(shell pkg-config --libs check 2>/dev/null || echo -lcheck) $(LIBS_test_$*)

$(B)/fathom.pc: Makefile
	@mkdir -p $(B)
	printf 'prefix=%s\nincludedir=$${prefix}/include\nlibdir=$${prefix}/lib\nplugindir=$${libdir}/fathom/plugins\n\nName: fathom\nDescription: MoE and MLA research platform with run-time backend plugins\nVersion: 0.1.0\nCflags: -I$${includedir}\nLibs: -L$${libdir} -lfathom\n' '$(PREFIX)' > $@

$(DEPS_OK): tools/deps
	@mkdir -p $(B)
	tools/deps --check || tools/deps
	@touch $@

test: $(DEPS_OK)
	$(MAKE) all
	$(MAKE) $(TEST_BIN) $(BAD_SO)
	FATHOM_BUILD=$(B) tools/run-tests $(TEST_BIN) tests/plugin_guide.sh tests/bench_smoke.sh

check: $(DEPS_OK)
	$(MAKE) B=build/asan OPT='-O1 -g -fno-omit-frame-pointer' SAN='-fsanitize=address,undefined -fno-sanitize-recover=all' test

demo: $(DEPS_OK)
	$(MAKE) all
	$(B)/fathom demo

bench: $(DEPS_OK)
	$(MAKE) all
	$(B)/fathom bench overhead
	$(B)/fathom bench gemm

roofline: $(DEPS_OK)
	$(MAKE) all
	FATHOM_BUILD=$(B) tools/roofline -o $(B)/roofline

install: all
	install -d $(DESTDIR)$(PREFIX)/include/fathom $(DESTDIR)$(PREFIX)/lib/fathom/plugins \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 core/include/fathom/*.h core/include/fathom/ops.def $(DESTDIR)$(PREFIX)/include/fathom/
	install -m 755 $(B)/libfathom.so $(DESTDIR)$(PREFIX)/lib/libfathom.so.0
	ln -sf libfathom.so.0 $(DESTDIR)$(PREFIX)/lib/libfathom.so
	install -m 644 $(B)/libfathom.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(PLUGIN_SO) $(DESTDIR)$(PREFIX)/lib/fathom/plugins/
	install -m 755 $(B)/fathom $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(B)/fathom.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
