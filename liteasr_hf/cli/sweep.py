"""`liteasr-hf sweep`: calibrate once, compress at every grid point, score each, plot the frontier.

    liteasr-hf sweep --model bundled/whisper-base --dataset ../shared/data/speech-dev \\
        --presets a b c --paper --sensitivity-sizes 0.8 0.65 \\
        --refine-sizes 0.8 0.65 --reference bundled/whisper-tiny.en --figures-dir model_cards/figures/base

Writes sweep.md / sweep.json (one row per grid point, the dense model first; each point's WER minus dense
with its 95 % paired-bootstrap interval over the evaluation clips), pareto.png (WER vs encoder size, one curve
per method, dense models as stars) and ranks.png (k/D per linear and layer).
"""

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from ..conversion import DEFAULT_MODEL
    from ..generation import MAX_NEW_TOKENS

    p = argparse.ArgumentParser(prog="liteasr-hf sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="dense Whisper: bundled name, local folder or Hub id")
    p.add_argument("--dataset", help="local audiofolder with split.json (default: the clips shipped in the package)")
    p.add_argument("--calibration-split", default="calibration", help="split.json key of the calibration clips")
    p.add_argument("--evaluation-split", default="evaluation", help="split.json key of the clips scored for WER")
    p.add_argument("--presets", nargs="*", default=["a", "b", "c"], help="θ presets (a/b/c or quality/balanced/fast)")
    p.add_argument("--theta", nargs="*", default=[], metavar="ATTN,MLP", help="extra θ pairs, e.g. 0.995,0.995")
    p.add_argument("--sensitivity-sizes", nargs="*", type=float, default=[],
                   help="size targets for ranks allocated by measured sensitivity (liteasr-hf calibrate --target-size), e.g. 0.8 0.65")
    p.add_argument("--refine-sizes", nargs="*", type=float, default=[],
                   help="size targets for sensitivity allocation followed by factor refinement (encoder MSE), e.g. 0.8 0.65")
    p.add_argument("--refine-steps", nargs="+", type=int, default=[90],
                   help="at most this many refinement steps for --refine-sizes (early stopping on held-back windows); one curve per value")
    p.add_argument("--refine-kl", type=float, default=0.0,
                   help="with --refine-sizes: also weight the decoder KL on the dense model's greedy transcripts by this (0 = encoder MSE only)")
    p.add_argument("--refine-lr", type=float, default=1e-4, help="refinement learning rate (with --refine-sizes)")
    p.add_argument("--refine-warmup", type=int, default=0, help="steps over which the refinement learning rate rises to --refine-lr")
    p.add_argument("--padding-weight", default="0.5", help="padding frames' share of the statistics; 'all' = every frame alike (paper)")
    p.add_argument("--paper", action="store_true", help="also draw the θ presets with the paper's all-frames statistics")
    p.add_argument("--reference", action="append", default=[], help="other dense models drawn as reference points")
    p.add_argument("--stats", help="statistics file, reused when present (default: <output-dir>/stats.safetensors)")
    p.add_argument("--limit", type=int, help="at most this many evaluation clips")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass / generate call")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="decoding cap per clip; hypotheses that hit it count as loops")
    p.add_argument("--output-dir", default="outputs/sweep", help="sweep.md/json, one JSON per grid point (reused on rerun), statistics")
    p.add_argument("--figures-dir", help="where the PNGs go (default: the output dir)")
    return p


def main(argv=None) -> int:
    from ..audio import load_clips
    from ..calibration import Compressor, load_whisper
    from ..calibration.config import padding_weight_arg
    from ..evaluation import load_groups
    from ..evaluation.sweep import run_sweep, sensitivity_method, sweep_markdown, theta_method

    p = build_parser()
    args = p.parse_args(argv)
    try:
        pw = padding_weight_arg(args.padding_weight)
    except ValueError:
        p.error(f"--padding-weight takes a number in [0, 1] or 'all', got {args.padding_weight!r}")
    model, processor = load_whisper(args.model)
    clips = load_clips(args.dataset, split=args.calibration_split)
    os.makedirs(args.output_dir, exist_ok=True)
    stats = args.stats or os.path.join(args.output_dir, "stats.safetensors")
    compressor = Compressor(model, processor, clips, batch_size=args.batch_size, save_stats=stats,
                            resume_stats=[stats] if os.path.exists(stats) else [])
    thetas = list(args.presets) + [tuple(float(x) for x in t.split(",")) for t in args.theta]
    methods = [theta_method(thetas, pw)] if thetas else []
    if args.paper and thetas:
        methods.append(theta_method(thetas, None, name="θ rule, all frames (paper)"))
    if args.sensitivity_sizes:
        methods.append(sensitivity_method(args.sensitivity_sizes, pw))
    for steps in args.refine_steps if args.refine_sizes else ():
        methods.append(sensitivity_method(args.refine_sizes, pw, refine=dict(steps=steps, kl=args.refine_kl, lr=args.refine_lr,
                                                                              warmup=args.refine_warmup)))
    groups = load_groups(args.dataset, split=args.evaluation_split, limit=args.limit)
    rows = run_sweep(compressor, methods, groups, args.output_dir, name=args.model,
                     references=[(os.path.basename(r), r) for r in args.reference], figures_dir=args.figures_dir,
                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    print(sweep_markdown(rows))
    print(f"\nwrote {args.output_dir}/sweep.md, sweep.json; {args.figures_dir or args.output_dir}/pareto.png, ranks.png", file=sys.stderr)
    return 0
