# backends/vulkan/plugin.mk - the shaders include shared GLSL files
# (common.glsl, types.glsl, mm.glsl, getrows.glsl): rebuild every SPIR-V
# module when one of them changes.
ifneq ($(strip $(VULKAN_SPV)),)
$(VULKAN_SPV): $(wildcard backends/vulkan/shaders/*.glsl)
endif
