"""Greedy transcription of a dataset with one or more Whisper / lite Whisper models, scored per source.

Batches go straight through the processor's feature extractor and `model.generate` (no pipeline: one
padded batch per call is the fast path on CPU). Under `accelerate launch` each process transcribes its
share of every source and the utterances are gathered; a plain single process needs no config.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from ..audio import SAMPLING_RATE, Clip, load_clips
from ..calibration.compressor import load_model
from ..generation import MAX_NEW_TOKENS, generate_kwargs, quiet_length_warning
from ..lite_whisper.context_lite_whisper import ContextPlan, pop_context
from .flops import encoder_cost
from .wer import wer_difference, word_errors

logger = logging.getLogger(__name__)

# The ESB protocol (LiteASR Table 1, Open ASR Leaderboard): per-subset WER, averaged over subsets.
ESB_DATASET = "hf-audio/esb-datasets-test-only-sorted"
ESB_SUBSETS = (("ami", "test"), ("earnings22", "test"), ("gigaspeech", "test"), ("librispeech", "test.clean"),
               ("librispeech", "test.other"), ("spgispeech", "test"), ("tedlium", "test"), ("voxpopuli", "test"))
LOOP_NGRAM_REPEATS = 4  # the same 1..5-word n-gram this many times in a row also counts as a loop


@dataclass
class Utterance:
    id: str
    source: str
    seconds: float
    reference: str
    hypothesis: str
    capped: bool  # generation ran into max_new_tokens instead of ending the text
    language: str | None = None


def as_lite(model):
    """A lite-whisper copy of a dense Whisper with no low-rank layer (so it takes a dynamic context); a lite model as is."""
    from ..lite_whisper import LiteWhisperForConditionalGeneration

    if isinstance(model, LiteWhisperForConditionalGeneration):
        return model
    return LiteWhisperForConditionalGeneration.from_whisper(model)


def load_groups(dataset: str | None, *, split=None, split_file=None, config=None, audio_column="audio", text_column=None,
                limit=None, group_by="source") -> list[tuple[str, list[Clip]]]:
    """[(group, clips)]: the ESB subsets for dataset "esb", else one dataset grouped by its `source` (a Hub dataset
    is one source) or, with group_by="language", its `language` column. `dataset=None` = the shipped clips'
    evaluation split. `split_file`: a JSON file of {split: [file names]} for a local folder (`split` picks the key,
    default evaluation)."""
    if dataset == "esb":
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise ValueError(f"the ESB protocol streams {ESB_DATASET} from the Hub, but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
                             "is set; unset them on a machine with network access, or pass a local --dataset folder")
        groups = []
        for subset, sp in ESB_SUBSETS:
            clips = load_clips(ESB_DATASET, config=subset, split=sp, text_column=text_column or "text", limit=limit, require_text=True)
            groups.append((f"{subset}/{sp}" if subset == "librispeech" else subset, clips))
        return groups
    files = None
    if split_file:
        from ..audio import split_files

        files, split = split_files(split_file, split or "evaluation"), None
    elif dataset is None and split is None:
        split = "evaluation"
    clips = load_clips(dataset, split=split, config=config, audio_column=audio_column, text_column=text_column,
                       files=files, limit=limit, require_text=True)
    default = os.path.basename(os.path.normpath(dataset)) if dataset else "shipped clips"
    if group_by not in ("source", "language"):
        raise ValueError(f"group_by must be 'source' or 'language', got {group_by!r}")
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        key = (c.language or "unknown language") if group_by == "language" else (c.source or default)
        groups.setdefault(key, []).append(c)
    return sorted(groups.items())


LONG_FORM_MODES = ("sequential", "chunked")


@torch.inference_mode()
def transcribe(model, processor, audios: Sequence, batch_size=8, long_form="sequential", return_sequences=False,
               **gen) -> tuple[list[str], list[bool]]:
    """(texts, capped) for 16 kHz mono arrays, in their order. Clips over 30 s go through Whisper's
    sequential long-form decoding (features padded to whole 30 s windows, attention mask marking the audio), or
    with `long_form="chunked"` through the ASR pipeline's 30 s chunks (5 s strides each side, merged on the overlap).
    `return_sequences` (clips of 30 s at most): (texts, capped, token ids of generate's rows as lists)."""
    if long_form not in LONG_FORM_MODES:
        raise ValueError(f"long_form must be one of {', '.join(LONG_FORM_MODES)}, got {long_form!r}")
    if return_sequences and any(len(a) > processor.feature_extractor.n_samples for a in audios):
        raise ValueError("return_sequences: every clip must be 30 s at most")
    gen = context_kwargs(model, gen)  # a per-call encoder context: one `encoder_context` for generate
    fe = processor.feature_extractor
    if long_form == "chunked" and any(len(a) > fe.n_samples for a in audios):
        long = [i for i, a in enumerate(audios) if len(a) > fe.n_samples]
        short = [i for i in range(len(audios)) if len(audios[i]) <= fe.n_samples]
        texts, capped = [None] * len(audios), [False] * len(audios)
        for i, t in zip(long, chunked(model, processor, [audios[i] for i in long], batch_size, **gen)):
            texts[i] = t
        if short:
            for i, t, k in zip(short, *transcribe(model, processor, [audios[i] for i in short], batch_size, **gen)):
                texts[i], capped[i] = t, k
        return texts, capped
    special = set(processor.tokenizer.all_special_ids)
    texts, capped, sequences = [None] * len(audios), [False] * len(audios), [None] * len(audios)
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))  # similar lengths batch with less padding
    with quiet_length_warning():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [audios[i] for i in idx]
            feats = fe(batch, sampling_rate=SAMPLING_RATE, return_tensors="pt", truncation=False, padding="longest",
                       pad_to_multiple_of=feature_window(model, fe, max(len(a) for a in batch), gen), return_attention_mask=True)
            is_long = feats.input_features.shape[-1] > fe.nb_max_frames
            out = model.generate(feats.input_features.to(model.device, model.dtype), attention_mask=feats.attention_mask.to(model.device),
                                 return_timestamps=is_long or None, **gen)
            seqs = out if torch.is_tensor(out) else out["sequences"]
            for j, i in enumerate(idx):
                texts[i] = processor.tokenizer.decode(seqs[j], skip_special_tokens=True).strip()
                # At the cap every new token is text (the last one may be a special token that arrived too late).
                capped[i] = not is_long and sum(t not in special for t in seqs[j].tolist()) >= gen["max_new_tokens"] - 1
                sequences[i] = seqs[j].tolist()
    return (texts, capped, sequences) if return_sequences else (texts, capped)


def context_kwargs(model, gen: dict) -> dict:
    """`gen` (generate keywords) with a lite model's per-call encoder context as one `encoder_context` (`pop_context`:
    gen's own, or the model's settings with gen's `encoder_context_*` / `encoder_padding_stride` applied); a dense
    model's unchanged."""
    encoder = model.get_encoder()
    if getattr(encoder, "context_settings", None) is None:
        return gen
    gen = dict(gen)
    context = pop_context(encoder.context_settings(), gen)
    return gen if context is None else dict(gen, encoder_context=context)


def feature_window(model, feature_extractor, samples: int, gen: dict) -> int:
    """Samples to pad a batch's features to: Whisper's 30 s window, or less where a lite model's encoder reads less of
    it: the frames of its context plan (`ContextSettings.plan_samples`; gen's `encoder_context`, else the model's
    settings) or, where the plan strides the padding of the full window, its dense positions only (the encoder writes
    the padding frames past those itself, `padding_frames`, as the extractor would). The log-mel of a shorter
    zero-padded window has the same numbers in the frames the encoder reads (zeros are zeros and the clip's maximum
    lies in its audio; checked bit for bit; the padding the encoder writes past a strided window is the extractor's
    to float32 rounding, 1.2e-7), and at a 10 s bucket costs a third. The plan is made for n_fft samples
    more than the audio, so that the STFT's reflected edge falls in zeros; where that picks a larger bucket than the
    encoder's (planned on the features), the encoder cuts the features."""
    full = feature_extractor.n_samples
    encoder = model.get_encoder()
    if getattr(encoder, "context_settings", None) is None or samples > full:
        return full
    context = context_kwargs(model, gen).get("encoder_context") or encoder.context_settings()
    hop = feature_extractor.hop_length
    plan = context if isinstance(context, ContextPlan) else context.plan_samples(samples + feature_extractor.n_fft, hop)
    if plan.frames >= encoder.full_frames() and plan.dense_positions is not None:
        return min(plan.dense_positions * 2 * hop, full)  # two mel frames an encoder position
    return min(plan.frames * hop, full)


def chunked(model, processor, audios: Sequence, batch_size=8, **gen) -> list[str]:
    """Texts of clips over 30 s through `pipeline("automatic-speech-recognition", chunk_length_s=30)`, its chunks
    batched `batch_size` at a time, each decoded with timestamp tokens (without them Whisper's no-timestamps mode
    stops early or loops on 30 s chunks, and the chunks merge on token overlap alone). `max_new_tokens` caps each
    chunk, as it caps each clip elsewhere."""
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor, chunk_length_s=30, batch_size=batch_size,
                   device=model.device, dtype=model.dtype)
    with quiet_length_warning():
        out = asr([{"raw": a, "sampling_rate": SAMPLING_RATE} for a in audios], return_timestamps=True,
                  generate_kwargs=gen)
    return [o["text"].strip() for o in out]


def repeated_ngram(text: str, repeats: int = LOOP_NGRAM_REPEATS, max_n: int = 5) -> bool:
    words = re.findall(r"\w+", text.lower())
    for n in range(1, max_n + 1):
        for i in range(len(words) - n * repeats + 1):
            if all(words[i + r * n : i + (r + 1) * n] == words[i : i + n] for r in range(1, repeats)):
                return True
    return False


def score(utterances: Sequence[Utterance]) -> dict:
    """WER with S/D/I and the counts of one table row; per-utterance errors in `errors`."""
    e = word_errors([u.reference for u in utterances], [u.hypothesis for u in utterances], [u.language for u in utterances])
    loops = sum(u.capped or repeated_ngram(u.hypothesis) for u in utterances)
    return dict(e, clips=len(utterances), seconds=sum(u.seconds for u in utterances), loops=loops)


def evaluate_model(name: str, groups, *, batch_size=8, language=None, task=None, max_new_tokens=MAX_NEW_TOKENS,
                   device=None, dtype=None, worst=5, average_subsets=False, model=None, processor=None,
                   progress=True, context_buckets="config", long_form="sequential") -> dict:
    """Transcribe every group with model `name` (or the given model/processor) and score it.

    Returns {"model", "encoder": encoder_cost, "sources": {source: row}, "summary": row, "worst": [...],
    "utterances": [...]}; rows hold wer, substitutions, deletions, insertions, words, clips, seconds,
    loops, wall_s, rtf. The summary pools all words; `average_subsets` (ESB) makes its WER the mean of
    the sources' WERs instead. `context_buckets`: "config" runs the encoder as the checkpoint says; a list of
    seconds (or None: the full window) sets the dynamic encoder context, wrapping a dense Whisper as lite-whisper.
    `long_form`: how clips over 30 s are decoded, "sequential" (Whisper's long-form generate) or "chunked" (the
    pipeline's 30 s chunks); a clip over 30 s counts as a loop by its repeated n-grams only.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState()
    if model is None:
        model, processor, _ = load_model(name, device or state.device, dtype)
    gen = generate_kwargs(model, language, task, max_new_tokens)
    context = {}  # the encoder context of every generate call: the checkpoint's, or these buckets
    if context_buckets != "config":
        model = as_lite(model)
        context = {"encoder_context": model.get_encoder().context_settings().replace(buckets=context_buckets)}
        gen = dict(gen, **context)
    local, walls = [], {}
    bar = tqdm(total=sum(len(c) for _, c in groups), desc=f"transcribing ({os.path.basename(str(name))})", unit="clip",
               disable=not progress or not state.is_main_process)
    multilingual = getattr(model.generation_config, "is_multilingual", False)
    for source, clips in groups:
        with state.split_between_processes(list(clips)) as shard:
            t0 = time.perf_counter()
            texts, capped = [None] * len(shard), [False] * len(shard)
            # A multilingual model transcribes each clip in the clip's own language where the data names it.
            for lang in sorted({c.language if multilingual else None for c in shard}, key=str):
                idx = [i for i, c in enumerate(shard) if (c.language if multilingual else None) == lang]
                kw = dict(generate_kwargs(model, lang or language, task, max_new_tokens), **context) if lang else gen
                t, k = transcribe(model, processor, [shard[i].audio for i in idx], batch_size, long_form, **kw)
                for i, ti, ki in zip(idx, t, k):
                    texts[i], capped[i] = ti, ki
            walls[source] = time.perf_counter() - t0
        local += [Utterance(c.id, source, c.seconds, c.text, t, k, c.language) for c, t, k in zip(shard, texts, capped)]
        bar.update(len(clips))
    bar.close()
    utts = gather_object(local) if state.num_processes > 1 else local
    wall = gather_object([walls]) if state.num_processes > 1 else [walls]
    sources = {}
    for source, _ in groups:
        row = score([u for u in utts if u.source == source])
        row["wall_s"] = sum(w[source] for w in wall)  # summed over processes: compute time, not elapsed time
        row["rtf"] = row["wall_s"] / row["seconds"]
        sources[source] = row
    summary = score(utts)
    summary["wall_s"] = sum(r["wall_s"] for r in sources.values())
    summary["rtf"] = summary["wall_s"] / summary["seconds"]
    if average_subsets:
        summary["wer"] = sum(r["wer"] for r in sources.values()) / len(sources)
        summary["average"] = "mean of subsets"
    per_utt = [dict(asdict(u), reference_normalized=r, hypothesis_normalized=h, errors=e, words=w)
               for u, r, h, e, w in zip(utts, summary.pop("references"), summary.pop("hypotheses"),
                                        summary.pop("errors"), summary.pop("utterance_words"))]
    for row in sources.values():
        for k in ("references", "hypotheses", "errors", "utterance_words"):
            row.pop(k)
    ranked = sorted(per_utt, key=lambda u: (u["errors"], u["errors"] / max(u["words"], 1)), reverse=True)
    return {"model": str(name), "encoder": encoder_cost(model.config), "sources": sources, "summary": summary,
            "worst": [u for u in ranked[:worst] if u["errors"]], "utterances": per_utt}


def _fmt_int(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.2f}G"


def clip_errors(result: dict) -> dict:
    """{clip id: (errors, reference words)} of an `evaluate_model` result: what paired comparisons resample."""
    return {u["id"]: (u["errors"], u["words"]) for u in result["utterances"]}


def markdown(results: Sequence[dict]) -> str:
    """One row per model and source plus each model's summary row, then each model's worst utterances."""
    head = ("| model | source | clips | audio s | WER % | S | D | I | words | loops | wall s | RTF | "
            "enc. params (% dense) | enc. GFLOPs / 30 s (% dense) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        enc = r["encoder"]
        size = f"{_fmt_int(enc['params'])} ({100 * enc['params'] / enc['dense_params']:.1f} %)"
        flops = f"{enc['flops'] / 1e9:.1f} ({100 * enc['flops'] / enc['dense_flops']:.1f} %)"
        rows = list(r["sources"].items()) + [("**" + r["summary"].get("average", "all") + "**", r["summary"])]
        for source, s in rows:
            lines.append(f"| {r['model']} | {source} | {s['clips']} | {s['seconds']:.1f} | {100 * s['wer']:.2f} | "
                         f"{s['substitutions']} | {s['deletions']} | {s['insertions']} | {s['words']} | {s['loops']} | "
                         f"{s['wall_s']:.1f} | {s['rtf']:.3f} | {size} | {flops} |")
    if len(results) > 1:  # the last model is the reference, as for --model-card
        ref = results[-1]
        lines += ["", f"WER minus {ref['model']}'s in points, with its 95 % paired-bootstrap interval over the clips:", ""]
        lines += [f"- {r['model']}: {wer_difference(ref['summary']['wer'], r['summary']['wer'], clip_errors(ref), clip_errors(r))}"
                  for r in results[:-1]]
        if len(ref["sources"]) > 1:  # per group, each with its own interval over that group's clips
            lines += ["", "The same per source, each interval over that source's clips:", "",
                      "| model | " + " | ".join(ref["sources"]) + " |", "|---" * (len(ref["sources"]) + 1) + "|"]
            for r in results[:-1]:
                cells = []
                for source, row in ref["sources"].items():
                    ids = {u["id"] for u in ref["utterances"] if u["source"] == source}
                    a, b = ({i: e for i, e in clip_errors(x).items() if i in ids} for x in (ref, r))
                    if len(ids) < 2:  # no interval from one clip
                        a = b = None
                    cells.append(wer_difference(row["wer"], r["sources"][source]["wer"], a, b) + (" (1 clip)" if a is None else ""))
                lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    for r in results:
        if r["worst"]:
            lines += ["", f"Worst utterances of {r['model']} (normalized reference / hypothesis):", ""]
            lines += [f"- `{u['id']}` ({u['errors']} errors / {u['words']} words){' [capped]' if u['capped'] else ''}\n"
                      f"  - ref: {u['reference_normalized']}\n  - hyp: {u['hypothesis_normalized']}" for u in r["worst"]]
    return "\n".join(lines)


def write_json(results: Sequence[dict], path: str, settings: dict | None = None):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"settings": settings or {}, "results": list(results)}, f, indent=1)
