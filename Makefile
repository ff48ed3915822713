# Peregrine — one static library (build/libperegrine.a) that the binary and the
# tests link. `make` builds build/peregrine; `make test` runs every test.
#
#   NO_CUDA=1   CPU-only build (automatic when nvcc is not found)
#   SAN=1       host code under AddressSanitizer + UndefinedBehaviorSanitizer
#   DEBUG=1     -O0 -g
#   SM=90       CUDA arch(s) to build (default: 90 and 80)
#
# Sources are picked up by wildcard: drop a .c/.cc/.cu into a subsystem folder
# and it is part of the library; tests/test_*.c each become a Criterion binary.

BUILD   ?= build
CC      ?= cc
CXX     ?= c++
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PYTHON  ?= python3
PREFIX  ?= /usr/local

ifeq ($(NVCC),)
  NO_CUDA := 1
endif

OPT     := -O2
ifeq ($(DEBUG),1)
  OPT   := -O0 -g
endif
# Host code is tuned for the build machine's vector units (AVX2/AVX-512 in the
# CPU matmul); set MARCH= to build a portable binary.
MARCH   ?= -march=native
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
# DEPS_ROOT: a folder with Debian packages unpacked (dpkg -x) for machines
# that lack the -dev packages (scripts/gpu-check.sh uses .deps/root).
DEPS_ROOT ?=
INCS    := -I. $(if $(DEPS_ROOT),-I$(DEPS_ROOT)/usr/include)
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(MARCH) $(WARN) -pthread -MMD -MP $(INCS) -g
CXXFLAGS+= -std=c++17 $(OPT) $(MARCH) -Wall -Wextra -Werror -pthread -MMD -MP $(INCS) -g
LDLIBS  := -lmicrohttpd -lcjson -lsentencepiece -lpcre2-8 -lstdc++ -lm -lpthread
DEPS_LIB := $(if $(DEPS_ROOT),$(abspath $(DEPS_ROOT))/usr/lib/x86_64-linux-gnu)
comma := ,
LDFLAGS += $(if $(DEPS_LIB),-L$(DEPS_LIB) -Wl$(comma)-rpath$(comma)$(DEPS_LIB) -Wl$(comma)-rpath-link$(comma)$(DEPS_LIB))

ifeq ($(SAN),1)
  SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  CFLAGS   += $(SANFLAGS)
  CXXFLAGS += $(SANFLAGS)
  LDFLAGS  += $(SANFLAGS)
  override BUILD := $(BUILD)-san
endif

ifneq ($(NO_CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  SM        ?= 90 80
  GENCODE   := $(foreach s,$(SM),-gencode arch=compute_$(s),code=sm_$(s))
  NVFLAGS   := -std=c++17 -O3 $(GENCODE) -lineinfo -Xcompiler -Wall,-Wextra,-fPIC -MMD -MP $(INCS) -DPG_CUDA=1
  CFLAGS    += -DPG_CUDA=1 -I$(CUDA_HOME)/include
  CXXFLAGS  += -DPG_CUDA=1 -I$(CUDA_HOME)/include
  LDFLAGS   += -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/lib64/stubs -Wl,-rpath,$(CUDA_HOME)/lib64
  LDLIBS    += -lcublasLt -lcublas -lcudart
  CU_SRCS   := $(wildcard kernels/cuda/*.cu)
  # model/engine_internal.h: the CUDA engine backend is linked once its file exists.
  CFLAGS    += $(if $(wildcard model/engine_cuda.c),-DPG_HAVE_ENGINE_CUDA=1)
endif

LIB_DIRS  := common tokenizer model kernels server tp tools
C_SRCS    := $(filter-out server/main.c,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
CC_SRCS   := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cc))
OBJS      := $(C_SRCS:%.c=$(BUILD)/%.o) $(CC_SRCS:%.cc=$(BUILD)/%.o) $(CU_SRCS:%.cu=$(BUILD)/%.o)
LIB       := $(BUILD)/libperegrine.a
BIN       := $(BUILD)/peregrine
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)

# Rebuild everything when the flags change (switching NO_CUDA, SAN, DEBUG).
FLAGS_STAMP := $(BUILD)/.flags-$(shell echo '$(CC) $(CFLAGS) $(NVFLAGS) $(NO_CUDA)' | md5sum | cut -c1-12)

.PHONY: all test test-c test-py test-gpu bench deps model run serve clean info-build
all: info-build $(BIN) $(TEST_BINS)

info-build:
	@printf 'peregrine build: cc=%s  cuda=%s  san=%s  -> %s\n' "$(CC)" \
	  "$(if $(filter 1,$(NO_CUDA)),no (NO_CUDA=1),yes sm_$(SM))" "$(if $(SAN),yes,no)" "$(BUILD)"

$(FLAGS_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.flags-*
	@touch $@

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB): $(OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/server/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion $(LDLIBS)

# ---------------------------------------------------------------- tests
# Criterion suites first (fast, no model needed except where marked), then the
# Python integration tests that drive the real binary with real clients.
test: all model
	@$(MAKE) --no-print-directory test-c test-py

test-c: $(TEST_BINS)
	@set -e; fail=0; for t in $(TEST_BINS); do \
	  echo "== $$t"; \
	  ASAN_OPTIONS=protect_shadow_gap=0:detect_leaks=1 PEREGRINE_BIN=$(abspath $(BIN)) \
	    $$t --jobs 2 || fail=1; \
	done; exit $$fail

test-py: $(BIN)
	PEREGRINE_BIN=$(abspath $(BIN)) ASAN_OPTIONS=protect_shadow_gap=0 $(PYTHON) -m pytest -q tests/

# GPU suites (run on a GPU machine: scripts/gpu-check.sh).
test-gpu:
	bash scripts/gpu-check.sh

bench: $(BIN)
	$(BIN) bench --model default

# ---------------------------------------------------------------- set-up
deps:
	bash scripts/deps.sh

model:
	@bash scripts/fetch-model.sh

# The main job: the OpenAI-compatible server with the default model on
# 127.0.0.1:8080 (CUDA when a GPU is present, else the CPU engine).
run: deps model all
	$(BIN) serve --model default

serve: $(BIN) model
	$(BIN) serve --model default

clean:
	rm -rf build build-san build-*

-include $(OBJS:.o=.d) $(BUILD)/server/main.d $(TEST_BINS:%=%.d)
