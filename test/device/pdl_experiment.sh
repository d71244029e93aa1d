set -u
make -j16 WERROR=1 all >/dev/null 2>&1 || { echo build failed; exit 1; }
export KILN_BACKEND_PATH=$PWD/build
V=devdata/shared/vocab/vocab-llama-spm.gguf
build/bin/kiln-gen-model --shape mistral-7b --type q4_0 --vocab $V -o /tmp/q.gguf -q
build/bin/kiln-gen-model --shape mistral-7b --type f16 --vocab $V -o /tmp/f.gguf -q
b() { KILN_CUDA_PROFILE=1 build/bin/kiln-bench --backend cuda -m $1 -p 0 -n 128 -r 2 2>&1 | grep -E "tg128|GPU" | sed 's/kiln error: cuda profile: //'; }
for pdl in 1 0; do echo "== PDL=$pdl (trigger at exit)"; for m in /tmp/q.gguf /tmp/f.gguf; do KILN_CUDA_PDL=$pdl b $m; done; done
rm -rf build/obj/backends/cuda build/libkiln-cuda.so
make -j16 WERROR=1 CUDA_EXTRA=-DKCU_PDL_EARLY=1 build/libkiln-cuda.so >/dev/null 2>&1 || echo rebuild failed
echo "== PDL=1, trigger at start"; for m in /tmp/q.gguf /tmp/f.gguf; do b $m; done
