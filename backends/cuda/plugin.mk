# backends/cuda/plugin.mk - CUDA build settings (included by the Makefile).
# Hopper machine code (sm_90a: the H100/H200 this backend is tuned on) plus
# compute_90 PTX, which the driver compiles for any newer GPU at load time.
CUDA_ARCHS ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90
NVCCFLAGS := -O3 -std=c++17 -lineinfo $(CUDA_ARCHS) $(CUDA_EXTRA) -Xcompiler -Wall,-Wextra,-Wno-unused-parameter \
	$(if $(filter 1,$(WERROR)),-Werror all-warnings -Xcompiler -Werror)
