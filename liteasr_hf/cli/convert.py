"""Convert a faster-whisper (CTranslate2) Whisper folder into a Hugging Face Whisper folder.

    liteasr-hf convert SRC DST
    liteasr-hf convert SRC DST --model-bin model.bin.part1 model.bin.part2

SRC holds model.bin (CTranslate2 binary version 6, WhisperSpec; float32/float16/bfloat16/int8/int16 weights),
config.json and tokenizer.json, as faster-whisper model folders do (e.g. a local copy of
Systran/faster-whisper-large-v3). DST receives model.safetensors (float32), config.json,
generation_config.json, tokenizer files, normalizer.json and preprocessor_config.json, loadable with
WhisperForConditionalGeneration / WhisperProcessor.from_pretrained(DST). Works offline.
In a checkout, `python scripts/convert_ct2.py ...` runs the same command (with the package installed: `pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liteasr-hf convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="faster-whisper / CTranslate2 model folder (model.bin, config.json, tokenizer.json)")
    parser.add_argument("dst", help="output folder for the Hugging Face model (must not exist unless --overwrite)")
    parser.add_argument("--model-bin", nargs="+", metavar="PART",
                        help="model.bin path(s) to use instead of SRC/model.bin; several parts are read as one file, in order")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it already exists")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from liteasr_hf.conversion import CT2FormatError, convert_ct2

    start = time.time()
    try:
        dst = convert_ct2(args.src, args.dst, model_bin=args.model_bin, overwrite=args.overwrite)
    except (CT2FormatError, FileNotFoundError, FileExistsError) as e:  # bad input: one `error:` line, status 2
        raise ValueError(str(e)) from e
    with open(os.path.join(dst, "config.json")) as f:
        c = json.load(f)
    with open(os.path.join(dst, "generation_config.json")) as f:
        multilingual = json.load(f).get("is_multilingual")
    print(f"converted {args.src} -> {dst} in {time.time() - start:.1f}s")
    print(f"  Whisper d_model={c['d_model']} layers={c['encoder_layers']}+{c['decoder_layers']} "
          f"heads={c['encoder_attention_heads']} mels={c['num_mel_bins']} vocab={c['vocab_size']} "
          f"({'multilingual' if multilingual else 'English-only'})")
    print(f"  files: {', '.join(sorted(os.listdir(dst)))}")
    return 0
