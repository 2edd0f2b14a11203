"""Clips that end near the top of a dynamic-context bucket, and the repetition loops a lite checkpoint makes on them.

A lite checkpoint's encoder reads the shortest context bucket that holds the audio plus its margin. A clip whose audio
ends just under (bucket - margin) leaves the decoder the least padding to see the speech end; at the 10 s bucket such
clips were found to loop (docs/benchmarks.md, "Top-of-bucket clips"), which is why new checkpoints have buckets 15 / 20 s,
`Transcriber` skips buckets under 15 s, and `generate` decodes suspect rows again on the full window (its loop guard).

The clips (`make_recipe`) are built from a local audiofolder's calibration clips only (its split.json's `calibration`
list; `CalibrationSource` never reads an evaluation clip), deterministically from a seed, for each bucket:

- range: 2-4 whole clips (more for a bucket over 20 s) joined with 0.2-0.6 s of silence, padded (leading or
  trailing) to a length drawn in [top - 1 s, top], top = bucket - margin;
- exact: the same, padded to top - 20 ms;
- repeat: the same TIMIT sentence (SA1 / SA2, read by every speaker: files named *_sa1.flac / *_sa2.flac) from 3-6
  speakers, trimmed of silence, joined to top - 20 ms (genuine repetition);
- tight: 2-6 clips (more over 20 s) trimmed of silence, joined to top - 20 ms with all padding leading (speech to
  the last sample);

in variants clean, telephone (16 -> 8 -> 16 kHz, a 4 kHz band), noise (white, 25 dB SNR against the speech),
telephone+noise, g711 (300-3400 Hz band-pass and 8-bit mu-law at 8 kHz) and snr10 (white noise at 10 dB). A recipe
entry holds everything the audio is rebuilt from (`render`): files, sample offsets, trims, length, variant, noise seed.
With the default buckets 10 / 15 / 20 s, margin 1 s and seed 0 it is the 134-clip recipe of docs/benchmarks.md.

The run (`benchmark`) decodes each clip greedily, one at a time, three ways: `generate` with its loop guard
(`model.loop_guard` counts the rows decoded again and those still suspect), `generate` with `guard_loops=False`
(a raw loop: `repetition_suspected` on its tokens, the guard's own test), and `Transcriber.transcribe`
(`Transcription.fallbacks` / `.loops`); WER against the joined transcripts.

`liteasr-hf benchmark-e2e --top-of-bucket` is the command line of this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time

import numpy as np

from ..audio import SAMPLING_RATE as SR
from ..audio import load_clips, split_files

logger = logging.getLogger(__name__)

# ../shared/data/speech-dev from the repository root: 60 calibration clips (TIMIT among them) and 115 evaluation clips
DEFAULT_DATASET = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "speech-dev"))
OLD_BUCKET = 10  # the bucket that looped: measured even for checkpoints that no longer have it
KINDS = ("range", "exact", "repeat", "tight")
VARIANTS = ("clean", "telephone", "noise", "telephone+noise", "g711", "snr10")
# Base clips (each then in 3 or 4 variants) per bucket and kind (range, exact, repeat, tight): the recipe of
# docs/benchmarks.md; another bucket gets DEFAULT_COUNTS. Speakers of a repeat clip, per bucket.
COUNTS = {10: (8, 2, 6, 4), 15: (4, 2, 3, 2), 20: (4, 2, 0, 2)}
DEFAULT_COUNTS = (4, 2, 0, 2)
REPEAT_SPEAKERS = {10: (3, 4), 15: (4, 5, 6)}
# Clips joined in a range or exact clip, and in a tight one, at most, up to a top of 19 s (the 20 s bucket's)
MOST_JOINED, MOST_TIGHT = 4, 6
EXACT_BELOW_S = 0.02  # exact, repeat and tight clips end this far under the bucket's top
MAX_TRIES = 100_000  # draws per kind and bucket before the data is declared too short for it


def _number(x):
    """10.0 -> 10 (the recipe's buckets as the docs write them); 12.5 stays."""
    return int(x) if float(x).is_integer() else float(x)


def default_buckets(config) -> list:
    """The buckets clips are built for by default: the checkpoint's (else the defaults of new checkpoints) and 10 s."""
    from ..calibration.config import DEFAULT_CONTEXT_BUCKETS

    own = getattr(config, "encoder_context_buckets", None) or DEFAULT_CONTEXT_BUCKETS
    return sorted({_number(b) for b in own} | {OLD_BUCKET})


class CalibrationSource:
    """The calibration clips of a local audiofolder (its split.json's `calibration` list, in that order), loaded once.
    Evaluation clips are never decoded: only the calibration files are, and `audio` refuses any other name."""

    def __init__(self, dataset: str | None = None):
        self.dataset = os.path.abspath(dataset or DEFAULT_DATASET)
        split = os.path.join(self.dataset, "split.json")
        if not os.path.isfile(split):
            raise ValueError(f"{self.dataset}: no split.json (top-of-bucket clips are built from its calibration clips)")
        self.names = [str(n) for n in split_files(split, "calibration")]
        with open(split) as f:
            evaluation = json.load(f).get("evaluation") or []
        self.evaluation = frozenset(evaluation if isinstance(evaluation, list) else [])
        if set(self.names) & self.evaluation:
            raise ValueError(f"{split}: calibration and evaluation share {sorted(set(self.names) & self.evaluation)}")
        clips = load_clips(self.dataset, files=self.names, require_text=True)
        self._clips = {c.id: c for c in clips}
        assert not set(self._clips) & self.evaluation, "an evaluation clip was read"
        missing = [n for n in self.names if n not in self._clips]
        if missing:
            raise ValueError(f"{self.dataset}: calibration clips missing or unreadable: {', '.join(missing)}")

    def audio(self, name: str) -> np.ndarray:
        if name not in self._clips:
            raise ValueError(f"{name} is not one of {self.dataset}'s calibration clips")
        return self._clips[name].audio

    def text(self, name: str) -> str:
        self.audio(name)
        return self._clips[name].text.strip()


# ------------------------------------------------------------------------------------------------------ the recipe
def _counts(bucket) -> dict:
    return dict(zip(KINDS, COUNTS.get(_number(bucket), DEFAULT_COUNTS)))


def _draws(what: str):
    """A counter of rejection-sampling draws that gives up after MAX_TRIES."""
    tries = 0

    def tick():
        nonlocal tries
        tries += 1
        if tries > MAX_TRIES:
            raise ValueError(f"no {what} after {MAX_TRIES} draws: the calibration clips are too long or too short for it")
    return tick


def _pieces(most: int, top: float) -> tuple[int, int]:
    """How many clips one clip joins, (fewest, most + 1) for rng.integers: 2 to `most` up to a 19 s top (the recipe
    of docs/benchmarks.md), above it from top / 4.5 to top / 2.2 (speech-dev's calibration clips are 2-5 s)."""
    return (2, most + 1) if top <= 19 else (math.floor(top / 4.5), math.ceil(top / 2.2) + 1)


def _place(lengths, gaps, lead: int) -> tuple[list[int], int]:
    """(start sample of each piece, end of the last) for pieces of `lengths` samples after `lead` samples of
    silence, `gaps` seconds apart."""
    offsets, pos = [], lead
    for i, n in enumerate(lengths):
        offsets.append(pos)
        pos += n + (round(gaps[i] * SR) if i < len(lengths) - 1 else 0)
    return offsets, pos


def _joined(source: CalibrationSource, buckets, margin: float, seed: int) -> list[dict]:
    """Base clips of the range and exact kinds: whole clips joined with short silences."""
    rng = np.random.default_rng(seed)
    cal = source.names
    lengths = {f: len(source.audio(f)) for f in cal}
    plan = []
    for bucket in buckets:
        top = bucket - margin
        plan.append((bucket, "range", top - 1.0, top, _counts(bucket)["range"]))
        plan.append((bucket, "exact", top - EXACT_BELOW_S, top - EXACT_BELOW_S, _counts(bucket)["exact"]))
    bases = []
    for bucket, kind, lo, hi, n in plan:
        made, tick = 0, _draws(f"{kind} clip for the {bucket} s bucket")
        while made < n:
            tick()
            k = int(rng.integers(*_pieces(MOST_JOINED, hi)))
            files = [str(f) for f in rng.choice(cal, size=k, replace=False)]
            gaps = rng.uniform(0.2, 0.6, size=k - 1)
            speech = sum(lengths[f] for f in files) + int(sum(round(g * SR) for g in gaps))
            target = round((lo if kind == "exact" else rng.uniform(lo, hi)) * SR)
            pad = target - speech
            if pad < 0 or pad > 1.2 * SR:  # the speech must fit and fill the bucket's top (1.2 s of padding at most)
                continue
            lead = int(rng.integers(0, pad + 1)) if rng.random() < 0.5 else 0  # else all trailing
            offsets, end = _place([lengths[f] for f in files], gaps, lead)
            made += 1
            bases.append(dict(bucket=_number(bucket), target=kind, files=files, offsets=offsets, total=target,
                              lead_pad=lead, trail_pad=target - end))
    recipe = []
    for i, b in enumerate(bases):
        for v in ["clean", "telephone"] + (["noise"] if i % 2 == 0 else ["telephone+noise"]):
            recipe.append(dict(id=f"b{b['bucket']}_{b['target']}_{i:02d}_{v}", **b, variant=v,
                               noise_seed=1000 + i if "noise" in v else None, snr_db=25.0 if "noise" in v else None))
    return recipe


def speech_bounds(audio: np.ndarray, keep: float = 0.05) -> tuple[int, int]:
    """(start, end) samples of the speech in a clip: 10 ms RMS above 3 % of its maximum, `keep` seconds either side."""
    rms = np.sqrt(np.convolve(audio.astype(np.float64) ** 2, np.ones(160) / 160, "same"))
    on = np.where(rms > rms.max() * 0.03)[0]
    k = round(keep * SR)
    return max(0, int(on[0]) - k), min(len(audio), int(on[-1]) + k)


def _trimmed(source: CalibrationSource, buckets, margin: float, seed: int) -> list[dict]:
    """Base clips of the repeat and tight kinds: clips trimmed of silence, ending EXACT_BELOW_S under the top."""
    rng = np.random.default_rng(seed)
    cal = source.names
    bounds = {f: speech_bounds(source.audio(f)) for f in cal}
    sa = [f for f in cal if f.endswith(("_sa1.flac", "_sa2.flac"))]
    bases = []

    def build(files, gaps, target, tight, kind, bucket):
        lens = [bounds[f][1] - bounds[f][0] for f in files]
        pad = target - (sum(lens) + sum(round(g * SR) for g in gaps))
        if pad < 0 or pad > 1.5 * SR:
            return False
        lead = pad if tight else int(rng.integers(0, pad + 1))
        offsets, end = _place(lens, gaps, lead)
        bases.append(dict(bucket=_number(bucket), target=kind, files=list(files), offsets=offsets, total=target,
                          src=[list(bounds[f]) for f in files], lead_pad=lead, trail_pad=target - end))
        return True

    for bucket in buckets:
        n, speakers = _counts(bucket)["repeat"], REPEAT_SPEAKERS.get(_number(bucket))
        if n and (speakers is None or len(sa) < max(speakers)):
            logger.warning("no repeat clips for the %s s bucket: %s", bucket, "no speaker count set for it"
                           if speakers is None else f"{len(sa)} TIMIT SA1/SA2 calibration clips, {max(speakers)} needed")
            continue
        made, tick = 0, _draws(f"repeat clip for the {bucket} s bucket")
        while made < n:
            tick()
            k = int(rng.choice(speakers))
            files = [str(f) for f in rng.choice(sa, size=k, replace=False)]
            gaps = rng.uniform(0.2, 0.6, size=k - 1)
            made += build(files, gaps, round((bucket - margin - EXACT_BELOW_S) * SR), bool(made % 2), "repeat", bucket)
    for bucket in buckets:
        made, tick = 0, _draws(f"tight clip for the {bucket} s bucket")
        while made < _counts(bucket)["tight"]:
            tick()
            k = int(rng.integers(*_pieces(MOST_TIGHT, bucket - margin)))
            files = [str(f) for f in rng.choice(cal, size=k, replace=False)]
            gaps = rng.uniform(0.2, 0.6, size=k - 1)
            made += build(files, gaps, round((bucket - margin - EXACT_BELOW_S) * SR), True, "tight", bucket)
    recipe = []
    for i, b in enumerate(bases):
        for v in ("clean", "telephone", "g711", "snr10"):
            recipe.append(dict(id=f"h{b['bucket']}_{b['target']}_{i:02d}_{v}", **b, variant=v,
                               noise_seed=2000 + i if v == "snr10" else None, snr_db=10.0 if v == "snr10" else None))
    return recipe


def make_recipe(source: CalibrationSource, buckets=(10, 15, 20), *, margin: float = 1.0, seed: int = 0) -> list[dict]:
    """The clips' recipe (a list of JSON-ready entries), the same for the same calibration clips, buckets, margin and
    seed: the joined kinds from `seed`, the trimmed kinds from `seed` + 1."""
    buckets = sorted(_number(b) for b in buckets)
    if not buckets or buckets[0] - margin - 1.0 <= 0 or buckets[-1] > 30:
        raise ValueError(f"buckets {buckets} with margin {margin}: each must be over the margin plus 1 s, and 30 s at most")
    return _joined(source, buckets, margin, seed) + _trimmed(source, buckets, margin, seed + 1)


def select(recipe: list[dict], per_cell: int | None) -> list[dict]:
    """At most `per_cell` entries of each (bucket, variant), taking the kinds in turn; in recipe order."""
    if per_cell is None:
        return list(recipe)
    keep = set()
    cells: dict = {}
    for i, e in enumerate(recipe):
        cells.setdefault((e["bucket"], e["variant"]), {}).setdefault(e["target"], []).append(i)
    for kinds in cells.values():
        queues = [list(q) for q in kinds.values()]
        taken = 0
        while taken < per_cell and any(queues):
            for q in queues:
                if q and taken < per_cell:
                    keep.add(q.pop(0))
                    taken += 1
    return [e for i, e in enumerate(recipe) if i in keep]


def load_recipe(path: str) -> list[dict]:
    """The entries of a recipe file: a JSON list of entries, or the JSON a `--top-of-bucket` run wrote."""
    with open(path) as f:
        data = json.load(f)
    entries = data["settings"]["recipe"] if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "files" in e for e in entries):
        raise ValueError(f"{path}: not a top-of-bucket recipe (a list of clip entries, or a run's JSON)")
    return entries


# ------------------------------------------------------------------------------------------------------- the audio
def telephone(audio: np.ndarray) -> np.ndarray:
    """Band-limit to 4 kHz: 16 kHz -> 8 kHz -> 16 kHz (polyphase, scipy's default Kaiser window)."""
    from scipy.signal import resample_poly

    return resample_poly(resample_poly(audio, 1, 2), 2, 1).astype(np.float32)[: len(audio)]


def g711(audio: np.ndarray) -> np.ndarray:
    """A harsher telephone channel: 8 kHz, 300-3400 Hz band-pass (4th-order Butterworth), 8-bit mu-law, back to 16 kHz."""
    from scipy.signal import butter, resample_poly, sosfiltfilt

    x = resample_poly(audio, 1, 2)
    x = sosfiltfilt(butter(4, [300, 3400], btype="band", fs=8000, output="sos"), x)
    peak = max(np.abs(x).max(), 1e-9)
    y = x / peak
    mu = 255.0
    q = np.round((np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) + 1) / 2 * mu) / mu * 2 - 1  # 8-bit code
    y = np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu
    return (resample_poly(y * peak, 2, 1)[: len(audio)]).astype(np.float32)


def render(entry: dict, source: CalibrationSource) -> tuple[np.ndarray, str]:
    """(16 kHz float32 audio, reference text) of one recipe entry, the same bits every time."""
    out = np.zeros(entry["total"], dtype=np.float32)
    pieces = []
    for f, offset, bounds in zip(entry["files"], entry["offsets"], entry.get("src") or [None] * len(entry["files"])):
        a = source.audio(f)
        if bounds is not None:
            a = a[bounds[0] : bounds[1]]
        out[offset : offset + len(a)] = a
        pieces.append(a)
    speech_rms = float(np.sqrt(np.mean(np.concatenate(pieces) ** 2)))
    variant = entry["variant"]
    if variant == "g711":
        out = g711(out)
    elif "telephone" in variant:
        out = telephone(out)
    if "noise" in variant or "snr" in variant:
        sigma = speech_rms / (10 ** (entry["snr_db"] / 20))
        out = (out + np.random.default_rng(entry["noise_seed"]).normal(0, sigma, size=len(out))).astype(np.float32)
    return out, " ".join(source.text(f) for f in entry["files"])


def fingerprint(audio: np.ndarray) -> str:
    """sha256 of the float32 samples: a rebuilt clip matches the run's bit for bit when this does."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------- the run
def looks_looped(text: str, capped: bool = False) -> bool:
    """docs/benchmarks.md's loop test of a transcript: at the token cap, a 1-5-gram repeated 4 times in a row, or a
    text that compresses like a repetition (zlib ratio over 2.4)."""
    from ..lite_whisper.modeling_lite_whisper import COMPRESSION_RATIO_THRESHOLD
    from ..transcription.engine import text_compression_ratio
    from .run import repeated_ngram

    return capped or repeated_ngram(text) or text_compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD


def run_clip(transcriber, audio: np.ndarray, gen: dict, seed: int = 0) -> dict:
    """One clip, decoded three ways with the transcriber's model: generate with its loop guard, generate without it
    (a raw loop: `repetition_suspected` on its tokens), and `transcriber.transcribe` (its fallbacks sample: seeded)."""
    import torch

    from ..lite_whisper.modeling_lite_whisper import repetition_suspected
    from .run import transcribe

    model, processor = transcriber.model, transcriber.processor
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    guard = getattr(model, "loop_guard", None)
    before = (guard.fallbacks, guard.loops) if guard is not None else (0, 0)
    t0 = time.perf_counter()
    (text,), (capped,), (tokens,) = transcribe(model, processor, [audio], batch_size=1, return_sequences=True, **gen)
    fallbacks, loops = (guard.fallbacks - before[0], guard.loops - before[1]) if guard is not None else (0, 0)
    t1 = time.perf_counter()
    (raw_text,), (raw_capped,), (raw_tokens,) = transcribe(model, processor, [audio], batch_size=1, return_sequences=True,
                                                           guard_loops=False, **gen)
    t2 = time.perf_counter()
    torch.manual_seed(seed)
    result = transcriber.transcribe(audio, language="en")
    settings = model.get_encoder().context_settings() if hasattr(model.get_encoder(), "context_settings") else None
    return {
        "context_s": settings.plan_samples(len(audio)).seconds if settings is not None else 30.0,
        "generate": {"text": text, "fallback": bool(fallbacks), "loop": bool(loops), "flagged": looks_looped(text, capped),
                     "wall_s": t1 - t0},
        "raw": {"text": raw_text, "loop": repetition_suspected(raw_tokens, eos, gen["max_new_tokens"]),
                "flagged": looks_looped(raw_text, raw_capped), "wall_s": t2 - t1},
        "transcriber": {"text": result.text, "fallbacks": result.fallbacks, "loops": result.loops,
                        "flagged": looks_looped(result.text), "contexts": result.info.get("contexts", {}),
                        "wall_s": result.wall_seconds},
    }


def summarize(clips: list[dict]) -> list[dict]:
    """Rows per (bucket, variant), then per bucket ("all" variants), then overall: counts and WER of each way."""
    from .wer import word_errors

    scored = {way: word_errors([c["reference"] for c in clips], [c[way]["text"] for c in clips])
              for way in ("generate", "raw", "transcriber")}
    for i, c in enumerate(clips):
        for way, e in scored.items():
            c[way].update(errors=e["errors"][i], words=e["utterance_words"][i])

    def row(bucket, variant, members, keep_clips):
        words = sum(c["generate"]["words"] for c in members)
        contexts = sorted({c["context_s"] for c in members})
        return {
            "bucket": bucket, "variant": variant, "clips": len(members),
            "audio_s": round(sum(c["seconds"] for c in members), 2), "contexts_s": contexts,
            "raw_loops": sum(c["raw"]["loop"] for c in members),
            "guard_fallbacks": sum(c["generate"]["fallback"] for c in members),
            "loops_after_guard": sum(c["generate"]["loop"] for c in members),
            "flagged_generate": sum(c["generate"]["flagged"] for c in members),
            "flagged_raw": sum(c["raw"]["flagged"] for c in members),
            "transcriber_fallbacks": sum(c["transcriber"]["fallbacks"] for c in members),
            "transcriber_loops": sum(c["transcriber"]["loops"] for c in members),
            "flagged_transcriber": sum(c["transcriber"]["flagged"] for c in members),
            **{f"wer_{way}": sum(c[way]["errors"] for c in members) / words if words else None
               for way in ("generate", "raw", "transcriber")},
            **({"clip_results": members} if keep_clips else {}),
        }

    buckets = sorted({c["bucket"] for c in clips})
    rows = []
    for bucket in buckets:
        for variant in VARIANTS + tuple(sorted({c["variant"] for c in clips} - set(VARIANTS))):
            members = [c for c in clips if c["bucket"] == bucket and c["variant"] == variant]
            if members:
                rows.append(row(bucket, variant, members, True))
    rows += [row(b, "all", [c for c in clips if c["bucket"] == b], False) for b in buckets]
    rows.append(row("all", "all", clips, False))
    return rows


def benchmark(lite: str, dataset: str | None = None, *, buckets=None, margin=None, seed: int = 0,
              clips_per_bucket: int | None = None, recipe: list[dict] | None = None, dtype: str = "auto",
              device: str | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """(rows, settings): the clips of `recipe` (else built for `buckets`, default `default_buckets`, with `margin`,
    default the checkpoint's, and `seed`), at most `clips_per_bucket` per bucket and variant, each decoded by `run_clip`
    with `lite` (a folder or Hub id) loaded as `Transcriber(lite, dtype=dtype)` loads it."""
    import torch
    from tqdm.auto import tqdm

    from ..generation import generate_kwargs
    from ..transcription import Transcriber
    from .long_audio import cpu_info, versions

    source = CalibrationSource(dataset)
    transcriber = Transcriber(lite, dtype=dtype, device=device)
    model = transcriber.model
    margin = getattr(model.config, "encoder_context_margin", 1.0) if margin is None else margin
    buckets = default_buckets(model.config) if buckets is None else sorted(_number(b) for b in buckets)
    built = recipe is None
    entries = select(make_recipe(source, buckets, margin=margin, seed=seed) if built else recipe, clips_per_bucket)
    gen = generate_kwargs(model, "en")
    clips = []
    t0 = time.perf_counter()
    for entry in tqdm(entries, desc="top-of-bucket clips", unit="clip", disable=not progress):
        audio, reference = render(entry, source)
        out = run_clip(transcriber, audio, gen, seed)
        clips.append({"id": entry["id"], "bucket": entry["bucket"], "target": entry["target"], "variant": entry["variant"],
                      "seconds": len(audio) / SR, "sha256": fingerprint(audio), "reference": reference, **out})
        logger.info("%s: context %.0f s, raw loop %s, guard fallback %s", entry["id"], out["context_s"],
                    out["raw"]["loop"], out["generate"]["fallback"])
    settings = {
        "lite": lite, "dtype": str(model.dtype).removeprefix("torch."), "device": str(transcriber.device),
        "model_buckets": getattr(model.config, "encoder_context_buckets", None),
        "model_margin": getattr(model.config, "encoder_context_margin", None),
        "transcriber_buckets": list(transcriber.settings.buckets or []), "max_new_tokens": gen["max_new_tokens"],
        "dataset": source.dataset, "built": {"buckets": buckets, "margin": margin, "seed": seed} if built else "from a recipe",
        "clips_per_bucket": clips_per_bucket, "clips": len(clips), "audio_s": round(sum(c["seconds"] for c in clips), 2),
        "wall_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(), "cpu": cpu_info(),
        "versions": versions(), "recipe": entries,
    }
    return summarize(clips), settings


def _cell(value, fmt: str = "d") -> str:
    return "—" if value is None else format(value, fmt)


def markdown(rows: list[dict], settings: dict) -> str:
    """The table: per bucket and variant, then per bucket, then all clips."""
    built = settings["built"]
    made = (f"built for buckets {' / '.join(map(str, built['buckets']))} s with margin {built['margin']:g} s, seed "
            f"{built['seed']}" if isinstance(built, dict) else "from a recipe")
    lines = [
        f"{settings['clips']} top-of-bucket clips ({settings['audio_s']:.1f} s of audio) from {settings['dataset']}'s "
        f"calibration clips, {made}; {settings['lite']} ({settings['dtype']}, buckets "
        f"{settings['model_buckets']}; Transcriber's {settings['transcriber_buckets']}); {settings['cpu']['model_name']}, "
        f"{settings['threads']} threads; greedy, at most {settings['max_new_tokens']} new tokens, one clip at a time; "
        f"{settings['wall_s']:.0f} s.",
        "bucket: the one the clip was built to top; context: the encoder context generate ran it on. raw loops: generate "
        "with guard_loops=False whose tokens repetition_suspected flags; guard: rows generate's loop guard decoded again "
        "on the full window, and still suspect after; flagged: transcripts at the token cap, with a 1-5-gram 4 times "
        "in a row or a zlib ratio over 2.4 (generate with the guard / without / Transcriber). WER against the joined "
        "transcripts.",
        "",
        "| bucket s | variant | clips | context s | raw loops | guard fallbacks | loops after guard | flagged g / raw / T "
        "| Transcriber fallbacks | Transcriber loops | WER % generate | WER % raw | WER % Transcriber |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wer = [_cell(None if r[k] is None else 100 * r[k], ".2f") for k in ("wer_generate", "wer_raw", "wer_transcriber")]
        bold = "**" if r["variant"] == "all" else ""
        lines.append(f"| {bold}{r['bucket']}{bold} | {bold}{r['variant']}{bold} | {r['clips']} | "
                     f"{', '.join(f'{c:g}' for c in r['contexts_s'])} | {r['raw_loops']} | {r['guard_fallbacks']} | "
                     f"{r['loops_after_guard']} | {r['flagged_generate']} / {r['flagged_raw']} / {r['flagged_transcriber']} | "
                     f"{r['transcriber_fallbacks']} | {r['transcriber_loops']} | {' | '.join(wer)} |")
    return "\n".join(lines)
