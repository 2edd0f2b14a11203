#!/usr/bin/env bash
# GPU tests and the speed benchmark in one go, for a machine with CUDA, torch, triton and transformers installed
# (this package need not be installed: it runs from the checkout). Each stage has its own time limit and writes its
# results as it finishes, so a slow stage (torch.compile) cannot lose the earlier ones.
#
#   OUT=outputs/gpu bash scripts/gpu_check.sh            # about 10 minutes (the stages' limits add to 840 s)
#
#   TOKENIZER=<folder or Hub id>: the Whisper tokenizer given to the calibration stage's random model
#   (default openai/whisper-large-v3; offline, any Whisper tokenizer folder will do).
#
# Files in $OUT: env.txt, tests.log, calibrate_large-v3.json, encoder_c.json, encoder_qk32.json,
# encoder_qk32_core_on_sdpa.json, core.json, e2e_large-v3-turbo.json, compile.json, and the full log (everything this script prints), all.log.
# Every model here has random weights: speed, time and memory figures, never accuracy.
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$OUT/all.log") 2>&1

stage() { echo; echo "=== $1 ($(date +%T))"; }
BENCH="python3 scripts/benchmark.py --device cuda --model large-v3 --dtype fp16"

stage "environment"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton, transformers; print('torch', torch.__version__, '| triton', triton.__version__,
'| transformers', transformers.__version__, '|', torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
} | tee "$OUT/env.txt"

stage "GPU tests: kernel vs PyTorch at full shapes, compile and CUDA-graph capture, encoder liteasr vs sdpa, calibration"
# -n 6: the kernel compiles for each rank, dtype and operand layout; xdist compiles them in parallel (disk cache)
timeout 120 python3 -m pytest -q -m gpu tests/test_kernel.py tests/test_calibrate_script.py -p no:cacheprovider -rs -n 6 2>&1 \
    | tee "$OUT/tests.log"

stage "calibration on CUDA (issue 7): large-v3 shapes, random weights, the shipped clips; 65 % by sensitivity + refinement"
# Time and peak memory of the whole recipe (statistics, spectra, sensitivity probes, PCA factors, 50 refinement
# steps) at large-v3's size. Random weights: the ranks and losses mean nothing, the cost does.
RANDOM_MODEL=/tmp/whisper-${CALIBRATION_SHAPE:-large-v3}-random
timeout 90 python3 - "$RANDOM_MODEL" "${TOKENIZER:-openai/whisper-large-v3}" "${CALIBRATION_SHAPE:-large-v3}" <<'EOF'
import sys, torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
from liteasr_hf.cli.benchmark import MODELS

out, tokenizer, shape = sys.argv[1:]
d, layers, heads, mels = MODELS[shape]  # Whisper's decoder has the encoder's width and depth
config = WhisperConfig(vocab_size=51866, num_mel_bins=mels, d_model=d, encoder_layers=layers, decoder_layers=layers,
                       encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d)
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 1.5 B parameters on a CPU is slow
    model = WhisperForConditionalGeneration(config)
model.half().save_pretrained(out)
WhisperFeatureExtractor(feature_size=mels).save_pretrained(out)
WhisperTokenizerFast.from_pretrained(tokenizer).save_pretrained(out)
print(f"{out}: random {shape}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")
EOF
timeout 240 python3 scripts/calibrate.py --model "$RANDOM_MODEL" --target-size 0.65 --refine-steps 50 \
    --output-dir "$RANDOM_MODEL-lite" && cp "$RANDOM_MODEL-lite/calibration.json" "$OUT/calibrate_${CALIBRATION_SHAPE:-large-v3}.json"
rm -rf "$RANDOM_MODEL" "$RANDOM_MODEL-lite"

stage "encoder, c-like ranks (q/k/v/out 304, fc 480), eager + CUDA graph, batch 1 and 8, with profiles"
timeout 100 $BENCH --ranks c-like --batch 1 8 --modes eager cuda-graph --profile --core-ranks --json "$OUT/encoder_c.json"

stage "encoder, q/k at rank 32 (attention scores in rank space, the kernel), rest c-like"
QK32="--ranks q_proj=32,k_proj=32,v_proj=304,out_proj=304,fc1=480,fc2=480 --batch 1 8 --no-naive --core-ranks"
timeout 60 $BENCH $QK32 --modes eager cuda-graph --json "$OUT/encoder_qk32.json"

stage "the same, attention core on SDPA instead of the kernel (LITEASR_ATTENTION=reference)"
LITEASR_ATTENTION=reference timeout 40 $BENCH $QK32 --modes cuda-graph --json "$OUT/encoder_qk32_core_on_sdpa.json"

stage "attention core: Triton kernel vs SDPA (flash), B=8 H=20 T=1500"
timeout 90 $BENCH --skip-encoder --core-ranks 16 32 48 64 96 --json "$OUT/core.json"

stage "end to end (issue 22): random large-v3-turbo weights, 64 tokens per clip, shipped clips' lengths, batch 8; dense vs lite, full vs dynamic context, CUDA graph per bucket"
timeout 150 python3 scripts/benchmark_e2e.py --random-shape large-v3-turbo --tokens 64 --batch 8 --rounds 2 \
    --split calibration --json "$OUT/e2e_large-v3-turbo.json"

stage "encoder, c-like ranks, torch.compile (regional: one graph per layer shape), batch 1 and 8"
timeout 100 $BENCH --ranks c-like --batch 1 8 --modes compile --no-naive --core-ranks --json "$OUT/compile.json"

stage "done"
