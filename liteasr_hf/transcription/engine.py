"""Transcribe recordings of any length: speech pieces from a voice-activity detector, batched by length, each batch on
its own encoder context.

Whisper reads 30 s windows. A lite checkpoint's encoder reads only the context bucket its audio needs
(`ContextSettings`), which saves nothing on a long recording cut into full 30 s windows. Here the recording is cut
where nobody speaks (Silero VAD), the speech is merged into pieces of at most `max_piece_seconds`, the pieces are
sorted by length and decoded `batch_size` at a time, and each batch is planned once (`ContextSettings.plan_samples`
over its longest piece): its features are computed only up to that context and the plan is passed to the encoder.
A batch is decoded greedily with rows leaving it as they end (`greedy_decode`). Times come back in recording time. Whisper's sequential long-form decoding (each 30 s window conditioned on the text
before it) is `mode="sequential"`.

Loop guard: a piece whose tokens ran into the token limit or repeat themselves (`repetition_suspected`), or whose
text compresses like a repetition, is decoded again on the full window, then with temperature fallback as Whisper
does; `Transcription.fallbacks` counts the pieces decoded again
and `.loops` those still repetitive.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import SAMPLING_RATE
from ..cli.options import DTYPES, torch_dtype
from ..generation import generate_kwargs, quiet_length_warning
from ..lite_whisper.context_lite_whisper import ContextPlan, ContextSettings
from ..lite_whisper.modeling_lite_whisper import COMPRESSION_RATIO_THRESHOLD, repetition_suspected
from .greedy import decoder_prompt, greedy_decode
from .result import Segment, Transcription, Word

logger = logging.getLogger(__name__)

MODES = ("vad", "sequential")
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's, after greedy
TOKENS_PER_SECOND = 10  # a cap per piece: fast speech is ~5 tokens a second; past 2x that a piece is looping
EXTRA_TOKENS = 32
# The shortest encoder context pieces run on: at 10 s the decoder looped on 8-9 s of speech (11-13 of 70 clips built to
# sit at the top of the bucket, in fp32, bf16 and int8), at 15 and 20 s on none (docs/benchmarks.md).
MIN_CONTEXT_SECONDS = 15.0


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD settings (silero-vad's names). `max_gap_seconds`: silence longer than this starts a new piece."""

    threshold: float = 0.5
    min_speech_duration_ms: int = 250
    min_silence_duration_ms: int = 300
    speech_pad_ms: int = 200
    max_gap_seconds: float = 2.0


@dataclass(frozen=True)
class Piece:
    start: int  # samples into the recording
    end: int

    @property
    def samples(self) -> int:
        return self.end - self.start


def merge_speech(speech: list[tuple[int, int]], max_samples: int, max_gap_samples: int) -> list[Piece]:
    """Speech spans (sample start, end; ascending, each at most `max_samples`) merged into pieces of at most
    `max_samples`, a gap of over `max_gap_samples` always ending a piece. A piece keeps the short pauses inside it,
    so its times map back to the recording by its start alone."""
    pieces: list[Piece] = []
    for start, end in speech:
        if pieces and end - pieces[-1].start <= max_samples and start - pieces[-1].end <= max_gap_samples:
            pieces[-1] = Piece(pieces[-1].start, end)
        else:
            pieces.append(Piece(start, min(end, start + max_samples)))
    return pieces


def text_compression_ratio(text: str) -> float:
    """Whisper's repetition measure: the text's bytes over their zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Transcriber:
    """A model, its processor and the transcription settings, loaded once for many recordings.

    `model`: a lite or dense Whisper (loaded, or a bundled name, local folder or Hub id). `dtype` "auto": on a CPU
    `optimize_for_cpu`'s choice (bf16 where the CPU has it natively, else float32 with an int8 decoder); on CUDA
    float16. "float32" on a CPU keeps the numerics of the model as loaded (lean decoder layers only). `mode` "vad":
    speech pieces batched by length; "sequential": Whisper's long-form decoding, conditioned on the previous text.
    `language` None: detected once per recording (multilingual models). Pieces run on the checkpoint's context buckets
    of `MIN_CONTEXT_SECONDS` and more. `max_piece_seconds` None: the largest of them less the margin and one second
    more of padding (a piece at the very top of its bucket leaves the decoder least padding to see the speech end),
    or 29 s for a full-window model."""

    def __init__(self, model, processor=None, *, device=None, dtype="auto", batch_size: int = 16, mode: str = "vad",
                 language: str | None = None, task: str = "transcribe", word_timestamps: bool = False,
                 max_piece_seconds: float | None = None, vad: VadOptions | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if dtype != "auto" and dtype not in DTYPES.values():
            raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPES.values())}, got {dtype!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        self.device = torch.device(device or "cpu")
        self.model, self.processor = self._load(model, processor, dtype, word_timestamps)
        self.batch_size, self.mode, self.language, self.task = batch_size, mode, language, task
        self.word_timestamps = word_timestamps
        self.vad = vad or VadOptions()
        encoder = self.model.get_encoder()
        self.lite = hasattr(encoder, "context_plan")  # a dense Whisper always reads the full window
        self.settings = (encoder.context_settings() if self.lite
                         else ContextSettings(full_frames=self.model.config.max_source_positions * 2))
        if self.settings.buckets is not None:  # checkpoints calibrated before the 10 s bucket was dropped carry it
            kept = tuple(b for b in self.settings.buckets if b >= MIN_CONTEXT_SECONDS)
            self.settings = self.settings.replace(buckets=kept or None)
        if max_piece_seconds is None:
            top = max(self.settings.buckets) if self.settings.buckets else 30.0
            max_piece_seconds = top - self.settings.margin - 1.0 if self.settings.buckets else 29.0
        if not 1.0 <= max_piece_seconds <= 30.0:
            raise ValueError(f"max_piece_seconds must be in [1, 30], got {max_piece_seconds!r}")
        self.max_piece_seconds = float(max_piece_seconds)
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))
        if not self.multilingual and (language not in (None, "en") or task != "transcribe"):
            raise ValueError(f"this model is English-only: language {language!r} / task {task!r} are not available")
        self._vad_model = None

    # ---- loading -------------------------------------------------------------------------------------------

    def _load(self, model, processor, dtype, word_timestamps):
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        import liteasr_hf  # noqa: F401  registers lite-whisper with the Auto classes

        if isinstance(model, str):
            from ..conversion import load_error, resolve_model

            path = resolve_model(model)
            try:
                # attention weights (word timestamps) need an implementation that returns them
                kwargs = {"attn_implementation": "eager"} if word_timestamps else {}
                loaded = AutoModelForSpeechSeq2Seq.from_pretrained(path, dtype=torch.float32, **kwargs)
                processor = processor or AutoProcessor.from_pretrained(path)
            except OSError as e:
                raise load_error(model, path, e) from e
            model = loaded
        elif processor is None:
            raise ValueError("a loaded model needs its processor: Transcriber(model, processor)")
        model = model.to(self.device).eval()
        if self.device.type == "cpu":
            from ..cpu import optimize_for_cpu

            if dtype == "auto":
                model = optimize_for_cpu(model)
            else:
                model = optimize_for_cpu(model, dtype=torch_dtype(dtype), decoder="fp32" if dtype == "float32" else None)
        else:
            model = model.to(torch.float16 if dtype == "auto" else torch_dtype(dtype))
        return model, processor

    # ---- one recording ---------------------------------------------------------------------------------------

    def transcribe(self, audio, *, language: str | None = None, task: str | None = None,
                   word_timestamps: bool | None = None, on_progress=None) -> Transcription:
        """Transcribe one recording: a path, bytes, a 16 kHz mono float array, or {"raw"/"array", "sampling_rate"}.
        `on_progress(seconds)` is called with the seconds of audio finished as they finish."""
        from .audio_io import load_audio

        t0 = time.perf_counter()
        audio = load_audio(audio)
        duration = len(audio) / SAMPLING_RATE
        language = language or self.language
        task = task or self.task
        word_timestamps = self.word_timestamps if word_timestamps is None else word_timestamps
        if not self.multilingual and (language not in (None, "en") or task != "transcribe"):
            raise ValueError(f"this model is English-only: language {language!r} / task {task!r} are not available")
        if word_timestamps and self.mode == "sequential":
            raise ValueError("word timestamps are given in mode 'vad'")
        info = {"mode": self.mode, "batch_size": self.batch_size, "device": str(self.device),
                "dtype": str(self.model.dtype).removeprefix("torch.")}
        if self.mode == "sequential":
            result = self._sequential(audio, language, task, info)
        else:
            result = self._by_pieces(audio, language, task, word_timestamps, info, on_progress)
        result.duration, result.wall_seconds = duration, time.perf_counter() - t0
        if on_progress is not None:
            on_progress(duration - info.pop("_reported", 0.0))
        info.pop("_reported", None)
        return result

    def _speech(self, audio) -> list[tuple[int, int]]:
        from silero_vad import get_speech_timestamps_sequence, load_silero_vad

        if self._vad_model is None:
            self._vad_model = load_silero_vad(sequence=True)
        o = self.vad
        spans = get_speech_timestamps_sequence(
            audio, self._vad_model, sampling_rate=SAMPLING_RATE, threshold=o.threshold,
            min_speech_duration_ms=o.min_speech_duration_ms, min_silence_duration_ms=o.min_silence_duration_ms,
            speech_pad_ms=o.speech_pad_ms, max_speech_duration_s=self.max_piece_seconds)
        return [(int(s["start"]), int(s["end"])) for s in spans]

    def _by_pieces(self, audio, language, task, word_timestamps, info, on_progress) -> Transcription:
        t_vad = time.perf_counter()
        speech = self._speech(audio) if len(audio) else []
        pieces = merge_speech(speech, round(self.max_piece_seconds * SAMPLING_RATE),
                              round(self.vad.max_gap_seconds * SAMPLING_RATE))
        info.update(vad_seconds=round(time.perf_counter() - t_vad, 3), pieces=len(pieces),
                    speech_seconds=round(sum(p.samples for p in pieces) / SAMPLING_RATE, 2), contexts={})
        if not pieces:
            return Transcription("", language, [], 0.0, info=info)
        if self.multilingual and language is None:
            language = self._detect_language(audio, pieces)
        order = sorted(range(len(pieces)), key=lambda i: pieces[i].samples)
        texts: list[str] = [""] * len(pieces)
        words: list[list[Word] | None] = [None] * len(pieces)
        fallbacks = loops = 0
        info["_reported"] = 0.0
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            batch = [audio[pieces[i].start : pieces[i].end] for i in idx]
            out = self._decode(batch, language, task, word_timestamps)
            for j, i in enumerate(idx):
                texts[i], words[i] = out["texts"][j], out["words"][j]
            fallbacks += out["fallbacks"]
            loops += out["loops"]
            key = f"{out['plan'].seconds:g}"
            info["contexts"][key] = info["contexts"].get(key, 0) + len(idx)
            if on_progress is not None:
                done = sum(len(a) for a in batch) / SAMPLING_RATE
                info["_reported"] += done
                on_progress(done)
        segments = []
        for piece, text, piece_words in zip(pieces, texts, words):
            if not text:
                continue
            offset = piece.start / SAMPLING_RATE
            if piece_words is not None:
                piece_words = [Word(round(w.start + offset, 3), round(w.end + offset, 3), w.word, w.probability)
                               for w in piece_words]
            segments.append(Segment(round(offset, 3), round(piece.end / SAMPLING_RATE, 3), text, piece_words))
        text = " ".join(s.text for s in segments)
        return Transcription(text, language, segments, 0.0, fallbacks=fallbacks, loops=loops, info=info)

    def _features(self, batch, plan: ContextPlan):
        """Log-mel features of `batch` computed only up to the plan's context: the frames the encoder reads are the
        numbers the full 30 s window would give (the plan keeps at least its margin of zeros after the audio, so the
        STFT's reflected edge falls in zeros, and the normalisation's maximum lies in the audio)."""
        fe = self.processor.feature_extractor
        feats = fe(batch, sampling_rate=SAMPLING_RATE, return_tensors="pt", padding="max_length",
                   max_length=plan.frames * fe.hop_length, truncation=True, return_attention_mask=True)
        return feats.input_features.to(self.device, self.model.dtype), feats.attention_mask.to(self.device)

    def _decode(self, batch, language, task, word_timestamps) -> dict:
        """Texts (and words) of one batch of pieces, with the loop guard."""
        longest = max(len(a) for a in batch)
        plan = self.settings.plan_samples(longest)
        features, mask = self._features(batch, plan)
        max_new_tokens = min(int(TOKENS_PER_SECOND * longest / SAMPLING_RATE) + EXTRA_TOKENS,
                             self.model.config.max_target_positions // 2 - 8)
        kw = generate_kwargs(self.model, language, task, max_new_tokens)
        with torch.inference_mode(), quiet_length_warning():
            seqs, words = self._run(features, mask, plan, kw, word_timestamps)
        texts = [self._text(s) for s in seqs]
        eos = self.model.generation_config.eos_token_id
        suspect = [i for i, (s, t) in enumerate(zip(seqs, texts)) if self._suspect(s, t, eos, max_new_tokens)]
        fallbacks = loops = 0
        if suspect:  # on the full window, greedy and then sampling, as Whisper falls back
            full = ContextPlan(self.settings.full_frames)
            feats, masks = self._features([batch[i] for i in suspect], full)
            with torch.inference_mode(), quiet_length_warning():
                again, again_words = self._run(feats, masks, full, kw, word_timestamps)
            for j, i in enumerate(suspect):
                fallbacks += 1
                s, w = again[j], again_words[j]
                for temperature in FALLBACK_TEMPERATURES:
                    if not self._suspect(s, self._text(s), eos, max_new_tokens):
                        break
                    with torch.inference_mode(), quiet_length_warning():
                        (s,), (w,) = self._run(feats[j : j + 1], masks[j : j + 1], full,
                                               dict(kw, do_sample=True, temperature=temperature), word_timestamps)
                else:
                    if self._suspect(s, self._text(s), eos, max_new_tokens):
                        loops += 1
                        logger.warning("a %.1f s piece still repeats itself after temperature fallback",
                                       len(batch[i]) / SAMPLING_RATE)
                seqs[i], texts[i], words[i] = s, self._text(s), w
        return {"texts": texts, "words": words, "fallbacks": fallbacks, "loops": loops, "plan": plan}

    def _run(self, features, mask, plan, kw, word_timestamps):
        """Token rows (and words) of a batch. Greedy without word timestamps: `greedy_decode`, whose rows leave the
        batch as they end; else Whisper's `generate`."""
        context = {"encoder_context": plan} if self.lite else {}
        if not word_timestamps and not kw.get("do_sample"):
            encoded = self.model.get_encoder()(features, attention_mask=mask, **context).last_hidden_state
            prompt = decoder_prompt(self.model.generation_config, kw.get("language"), kw.get("task"))
            seqs = greedy_decode(self.model, encoded, prompt, kw["max_new_tokens"])
            return seqs, [None] * len(seqs)
        if not word_timestamps:
            out = self.model.generate(features, attention_mask=mask, **context, **kw)
            return list(out), [None] * len(out)
        out = self.model.generate(features, attention_mask=mask, return_token_timestamps=True,
                                  return_dict_in_generate=True, **context, **kw)
        seqs = list(out["sequences"])
        return seqs, [self._words(s, t) for s, t in zip(seqs, out["token_timestamps"])]

    def _text(self, tokens) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    @staticmethod
    def _suspect(tokens, text, eos, max_new_tokens) -> bool:
        return repetition_suspected(tokens.tolist(), eos, max_new_tokens) or text_compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD

    def _words(self, tokens, times) -> list[Word]:
        """Words of one row from its token times (DTW over the alignment heads' cross-attention): a token that begins
        with a space (or the first text token) starts a word; a word ends where the token after its last one starts."""
        tok = self.processor.tokenizer
        special = set(tok.all_special_ids)
        eos = self.model.generation_config.eos_token_id
        words: list[Word] = []
        ids, times = tokens.tolist(), times.tolist()
        for k, t in enumerate(ids):
            if t in special or t >= eos:
                if words and words[-1].end is None:
                    words[-1].end = times[k]
                continue
            piece = tok.decode([t])
            if not words or words[-1].end is not None or piece.startswith(" "):
                if words and words[-1].end is None:
                    words[-1].end = times[k]
                words.append(Word(times[k], None, piece.strip()))
            else:
                words[-1].word += piece
        for w in words:
            w.start, w.end = round(float(w.start), 3), round(float(w.end if w.end is not None else w.start), 3)
        return [w for w in words if w.word]

    def _detect_language(self, audio, pieces) -> str:
        """The language of the recording's first 30 s of speech (Whisper's language token, most likely)."""
        longest = max(pieces[:4], key=lambda p: p.samples)
        clip = audio[longest.start : longest.end]
        plan = self.settings.plan_samples(len(clip))
        features, mask = self._features([clip], plan)
        with torch.inference_mode():
            encoded = self.model.get_encoder()(features, attention_mask=mask,
                                               **({"encoder_context": plan} if self.lite else {}))
            token = int(self.model.detect_language(encoder_outputs=encoded)[0])
        codes = {v: k for k, v in self.model.generation_config.lang_to_id.items()}
        return codes[token].strip("<|>")

    def _sequential(self, audio, language, task, info) -> Transcription:
        """Whisper's sequential long-form decoding: 30 s windows, each conditioned on the text before it, timestamps,
        temperature fallback."""
        fe = self.processor.feature_extractor
        if not len(audio):
            return Transcription("", language, [], 0.0, info=info)
        if self.multilingual and language is None:  # once, from the first 30 s, rather than per window
            language = self._detect_language(audio, [Piece(0, min(len(audio), fe.n_samples))])
        long = len(audio) > fe.n_samples
        feats = fe(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt", truncation=not long,
                   padding="longest" if long else "max_length", return_attention_mask=True)
        kw = generate_kwargs(self.model, language, task, None)
        kw.pop("max_new_tokens")
        kw.update(return_timestamps=True, return_segments=True, temperature=(0.0,) + FALLBACK_TEMPERATURES,
                  compression_ratio_threshold=1.35, logprob_threshold=-1.0, no_speech_threshold=0.6)
        if long:  # one window has nothing to be conditioned on
            kw["condition_on_prev_tokens"] = True
        with torch.inference_mode():
            out = self.model.generate(feats.input_features.to(self.device, self.model.dtype),
                                      attention_mask=feats.attention_mask.to(self.device), **kw)
        segments = []
        for seg in out["segments"][0] if isinstance(out, dict) and "segments" in out else []:
            text = self._text(seg["tokens"])
            if text:
                segments.append(Segment(round(float(seg["start"]), 3), round(float(seg["end"]), 3), text))
        if not segments and isinstance(out, dict) and "sequences" in out:
            text = self._text(out["sequences"][0])
            segments = [Segment(0.0, round(len(audio) / SAMPLING_RATE, 3), text)] if text else []
        return Transcription(" ".join(s.text for s in segments), language, segments, 0.0, info=info)


_LAST: dict = {}


def transcribe(model, audio, **options) -> Transcription:
    """Transcribe one recording with `model` (a loaded model, or a bundled name, folder or Hub id). Options are
    `Transcriber`'s and `Transcriber.transcribe`'s. The last Transcriber built from a name is kept, so that calls in a
    loop load the model once; for many files, hold a `Transcriber` yourself."""
    per_call = {k: options.pop(k) for k in ("language", "task", "word_timestamps", "on_progress") if k in options}
    processor = options.pop("processor", None)
    if isinstance(model, str):
        key = (model, tuple(sorted((k, repr(v)) for k, v in options.items())))
        transcriber = _LAST.get(key)
        if transcriber is None:
            _LAST.clear()
            transcriber = _LAST[key] = Transcriber(model, processor, **options)
    else:
        transcriber = Transcriber(model, processor, **options)
    return transcriber.transcribe(audio, **per_call)
