"""WER of Whisper / lite Whisper models on real speech: markdown table on stdout, JSON beside it.
With several models, each model's WER minus the last one's (put the dense reference last) is given with its
95 % paired-bootstrap interval over the clips: on a few hundred clips, a difference of a few words is noise.

    liteasr-hf evaluate                            # bundled whisper-base on the shipped clips' evaluation split
    liteasr-hf evaluate --model bundled/whisper-tiny.en --model out/lite-base \\
        --dataset ../shared/data/speech-dev --split evaluation
    liteasr-hf evaluate --dataset esb              # the paper's ESB protocol (needs network)
    accelerate launch scripts/evaluate_wer.py ...  # clips sharded across processes / GPUs

In a checkout, `python scripts/evaluate_wer.py ...` runs the same command (with the package installed: `pip install -e .`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from liteasr_hf.conversion import DEFAULT_MODEL
    from liteasr_hf.generation import MAX_NEW_TOKENS

    p = argparse.ArgumentParser(prog="liteasr-hf evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help=f"bundled name, local folder or Hub id; repeatable (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", help="local audiofolder, Hub dataset id, or 'esb' (default: the clips shipped in the package)")
    p.add_argument("--split", help="split.json key of a local folder, or Hub split (default for the shipped clips: evaluation)")
    p.add_argument("--split-file", help="JSON file mapping split names to file names of the local folder; --split picks "
                   "the key (default evaluation)")
    p.add_argument("--config", help="Hub dataset config")
    p.add_argument("--audio-column", default="audio", help="column holding the audio in a Hub dataset")
    p.add_argument("--text-column", help="transcript column (default: first of transcription, text, sentence, ...)")
    p.add_argument("--limit", type=int, help="at most this many clips (per ESB subset)")
    p.add_argument("--group-by", choices=["source", "language"], default="source",
                   help="one table row per `source` or per `language` column value; a multilingual model always transcribes "
                        "each clip in its `language` where the data has that column (CER for zh/ja/ko/th)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per generate call")
    p.add_argument("--language", help="multilingual models only (default en)")
    p.add_argument("--task", choices=["transcribe", "translate"], help="multilingual models only (default transcribe)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="longer hypotheses count as repetition loops")
    p.add_argument("--device", help="default: accelerate's device for this process")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="weights and activations (default float32)")
    p.add_argument("--context-buckets", nargs="+", default=None, metavar="SECONDS",
                   help="run the encoder on this dynamic context (seconds, or 'full' for the 30 s window) instead of what each "
                        "checkpoint's config says; a dense Whisper is wrapped as lite-whisper for it")
    p.add_argument("--long-form", choices=["sequential", "chunked"], default="sequential",
                   help="clips over 30 s: Whisper's sequential long-form generate, or the pipeline's 30 s chunks "
                        "(chunk_length_s=30, --batch-size chunks at a time); --max-new-tokens caps each window or chunk")
    p.add_argument("--worst", type=int, default=5, help="worst utterances to list per model")
    p.add_argument("--output", default="outputs/evaluation.json", help="JSON results")
    p.add_argument("--model-card", metavar="FOLDER", help="record the first model's WER in this lite checkpoint's model card "
                   "(the last --model given is taken as the dense reference when there are two)")
    return p


def main(argv=None) -> int:
    from liteasr_hf.conversion import DEFAULT_MODEL, resolve_model

    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Where the results go is checked before any model transcribes, so no scoring is lost to a bad path.
    from liteasr_hf.calibration.card import INFO_FILE

    if args.model_card and not os.path.isfile(os.path.join(args.model_card, INFO_FILE)):
        p.error(f"--model-card {args.model_card}: no {INFO_FILE} there; it takes a folder written by liteasr-hf calibrate")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    except OSError as e:
        p.error(f"--output {args.output}: cannot create its folder ({e.strerror or e})")

    import torch
    from accelerate import PartialState

    from liteasr_hf.evaluation import evaluate_model, load_groups, markdown, write_json

    state = PartialState(cpu=args.device == "cpu")  # first call: with --device cpu, launched processes run on CPUs (gloo)
    context = "config"
    if args.context_buckets:
        try:
            context = None if [b.lower() for b in args.context_buckets] == ["full"] else [float(b) for b in args.context_buckets]
        except ValueError:
            p.error(f"--context-buckets takes seconds or 'full', got {' '.join(args.context_buckets)}")
    models = args.model or [DEFAULT_MODEL]
    for m in models:  # a bad folder fails now, not after the models before it have transcribed everything
        resolve_model(m)
    groups = load_groups(args.dataset, split=args.split, split_file=args.split_file, config=args.config, audio_column=args.audio_column,
                         text_column=args.text_column, limit=args.limit, group_by=args.group_by)
    results = [
        evaluate_model(m, groups, batch_size=args.batch_size, language=args.language, task=args.task,
                       max_new_tokens=args.max_new_tokens, device=args.device, dtype=getattr(torch, args.dtype),
                       worst=args.worst, average_subsets=args.dataset == "esb", context_buckets=context,
                       long_form=args.long_form)
        for m in models
    ]
    if not state.is_main_process:
        return 0
    print(markdown(results))
    settings = {k: v for k, v in vars(args).items() if k not in ("model", "output", "model_card")}
    settings.update(processes=state.num_processes, dataset=args.dataset or "shipped clips", split=args.split or ("evaluation" if not args.dataset else None))
    write_json(results, args.output, settings)
    print(f"\nresults: {args.output}", file=sys.stderr)
    if args.model_card:
        from liteasr_hf.evaluation import record_in_model_card

        record_in_model_card(args.model_card, results[0], results[-1] if len(results) > 1 else None,
                             dataset=settings["dataset"], split=settings["split"])
        print(f"model card: {os.path.join(args.model_card, 'README.md')}", file=sys.stderr)
    return 0
