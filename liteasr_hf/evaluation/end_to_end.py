"""End-to-end transcription speed: what a user waits for, dense vs lite vs lite + dynamic context, per dtype and batch.

Every row transcribes the same clips in the same process; rows are interleaved a few clips at a time (every row on
clips 1-8, then on 9-16, ...; see `run_rows`), so drift of the machine (thermal, other load) hits every row alike.
Wall time is the median over rounds;
the encoder's share comes from hooks around the encoder's forward; WER is scored on the first round's transcripts
with its paired 95 % interval against the reference row (the first one: dense, fp32, full 30 s window).
A faster-whisper row runs the same weights through CTranslate2 when the package is installed.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

from ..audio import SAMPLING_RATE
from ..generation import quiet_length_warning
from .run import as_lite, repeated_ngram, transcribe  # noqa: F401  as_lite: e2e.as_lite of benchmark-e2e
from .wer import wer_difference, word_errors

logger = logging.getLogger(__name__)


@dataclass
class Row:
    label: str
    run: object  # callable(audios) -> (texts, capped: ran into the token cap, where the engine tells)
    encoder_seconds: list = field(default_factory=list)  # filled by the encoder hooks, one entry per round
    walls: list = field(default_factory=list)
    texts: list | None = None
    capped: list | None = None
    loops: int = 0


class EncoderTimer:
    """Adds the wall time of every encoder forward to `self.seconds` while attached."""

    def __init__(self, encoder):
        self.seconds, self._t0 = 0.0, None
        self._handles = [encoder.register_forward_pre_hook(self._start), encoder.register_forward_hook(self._stop)]

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t0

    def remove(self):
        for h in self._handles:
            h.remove()


def transformers_runner(model, processor, *, batch_size, buckets, margin, path, gen, timer_box, padding_stride=1):
    """A callable(audios) -> (texts, capped) through `transcribe` (generate) or `pipeline()`, the encoder on `buckets`
    (None: the full window) with `margin` and `padding_stride` (a lite model, see `as_lite`): settings built once and
    passed to every generate call (`encoder_context`); each call's encoder seconds go to `timer_box`."""
    encoder = model.get_encoder()
    # bad values fail here, before any timing
    settings = encoder.context_settings().replace(buckets=buckets, margin=margin, padding_stride=padding_stride)
    gen = dict(gen, encoder_context=settings)

    def timed(fn):
        def run(audios):
            timer = EncoderTimer(encoder)
            try:
                result = fn(audios)
            finally:
                timer.remove()
            timer_box.append(timer.seconds)
            return result
        return run

    if path == "generate":
        return timed(lambda audios: transcribe(model, processor, audios, batch_size, **gen))
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor, dtype=model.dtype, device=model.device)

    def run_pipeline(audios):
        inputs = [{"raw": a, "sampling_rate": SAMPLING_RATE} for a in audios]
        with quiet_length_warning():
            texts = [o["text"].strip() for o in asr(inputs, batch_size=batch_size, generate_kwargs=gen)]
        return texts, [False] * len(texts)  # the pipeline does not say; repeated n-grams still count
    return timed(run_pipeline)


def _faster_whisper_in_process(folder, compute_type, threads, language, max_new_tokens, batch_size=1):
    """faster-whisper on the same weights, greedy, no VAD, no fallback, no conditioning: the same decoding as the
    transformers rows. Batch 1 goes through its `transcribe`; larger batches through CTranslate2's batch API (one
    padded 30 s window per clip, `generate` over the batch), as faster-whisper's own batched pipeline does per segment.
    None when faster-whisper is not installed. In this process: `faster_whisper_runner` runs it in a worker."""
    try:
        from faster_whisper import WhisperModel
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
    except ImportError:
        return None
    import numpy as np

    model = WhisperModel(folder, device="cpu", compute_type=compute_type, cpu_threads=threads)
    multilingual = model.model.is_multilingual
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language=(language or "en") if multilingual else None)
    prompt = model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=True)

    def one_at_a_time(audios):
        texts = []
        for a in audios:
            segments, _ = model.transcribe(a, beam_size=1, language=language, temperature=0.0, vad_filter=False,
                                           condition_on_previous_text=False, without_timestamps=True,
                                           max_new_tokens=max_new_tokens)
            texts.append(" ".join(s.text.strip() for s in segments))
        return texts, [False] * len(texts)

    def batched(audios):
        texts, capped = [], []
        for i in range(0, len(audios), batch_size):
            feats = np.stack([pad_or_trim(model.feature_extractor(a)) for a in audios[i : i + batch_size]])
            results = model.model.generate(model.encode(feats), [list(prompt) for _ in feats], beam_size=1,
                                           max_length=len(prompt) + max_new_tokens, suppress_blank=True, suppress_tokens=[-1])
            for r in results:
                ids = r.sequences_ids[0]
                texts.append(tokenizer.decode(ids).strip())
                capped.append(len(ids) >= max_new_tokens)
        return texts, capped

    return one_at_a_time if batch_size == 1 else batched


def _worker(conn, factory, args):
    """A worker process's loop: build the runner `factory(*args)`, then answer each item it is sent with the runner's
    result until None (a None runner: "ready" False, and the parent closes it)."""
    import traceback

    try:
        run = factory(*args)
    except Exception:  # noqa: BLE001  (reported to the parent, which raises)
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", run is not None))
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent is gone
            return
        if item is None:
            return
        try:
            conn.send(("ok", run(item)))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Worker:
    """The runner `factory(*args)` (a module-level callable, so that a spawned process can import it) built and run in
    a spawned process of its own: calling this sends an item there and returns the runner's result; an exception
    there, while building or running, comes back here as a RuntimeError with the worker's traceback. `ready`: False
    where the factory returned None. `close()` ends the process (a daemon: it ends with this one anyway)."""

    def __init__(self, factory, args, name="worker"):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_worker, args=(child, factory, args), daemon=True)
        self._process.start()
        child.close()  # only the worker holds its end now: if it dies, recv() here ends with EOFError
        try:
            self.ready = self._receive()
        except RuntimeError:
            self._process.join(timeout=30)
            raise

    def _receive(self):
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._process.join(timeout=30)
            raise RuntimeError(f"the {self.name} worker process ended (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {self.name} worker failed:\n{value}")
        return value

    def __call__(self, item):
        self._conn.send(item)
        return self._receive()

    def close(self):
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:  # its end is already closed
                pass
            self._process.join(timeout=30)
        self._conn.close()


def faster_whisper_runner(folder, compute_type, threads, language, max_new_tokens, batch_size=1):
    """`_faster_whisper_in_process`'s runner, run in a worker process of its own (`Worker`): a callable(audios) ->
    (texts, capped) that sends the audios there and waits, or None when faster-whisper is not installed. The rows still
    take turns in one run; apart, neither engine's runtime (CTranslate2 brings its own OpenMP) shares a process with the
    other's: in one process with faster-whisper the transformers rows ran slower (docs/benchmarks.md)."""
    worker = Worker(_faster_whisper_in_process, (folder, compute_type, threads, language, max_new_tokens, batch_size),
                    "faster-whisper")
    if not worker.ready:
        worker.close()
        return None
    return worker


def run_rows(rows, clips, rounds, chunk=8, progress=True):
    """Transcribe `clips` with every row, `rounds` times. Each round walks the clips `chunk` at a time, shortest first
    (the order `transcribe` batches in, so a row whose batch size divides `chunk` forms the batches it forms on the
    whole list), and runs every row on each chunk in turn, starting one row later at each chunk. A burst of load on a
    shared machine then slows every row alike; rounds of whole rows let one burst land on one row (seen here: one
    row's two rounds took 36.6 and 65.5 s while dense moved 13 %). A row's round time is the sum of its chunks'."""
    from tqdm.auto import tqdm

    order = sorted(range(len(clips)), key=lambda i: len(clips[i].audio))
    chunks = [order[s : s + chunk] for s in range(0, len(order), chunk)]
    bar = tqdm(total=rounds * len(chunks), desc="end-to-end chunks (every row each)", unit="chunk", disable=not progress)
    for r in range(rounds):
        walls = [0.0] * len(rows)
        texts, capped = [[None] * len(clips) for _ in rows], [[False] * len(clips) for _ in rows]
        encoder_calls = [len(row.encoder_seconds) for row in rows]
        for j, idx in enumerate(chunks):
            audios = [clips[i].audio for i in idx]
            for n in range(len(rows)):
                k = (j + r + n) % len(rows)
                t0 = time.perf_counter()
                chunk_texts, chunk_capped = rows[k].run(audios)
                walls[k] += time.perf_counter() - t0
                for i, t, c in zip(idx, chunk_texts, chunk_capped):
                    texts[k][i], capped[k][i] = t, c
            bar.update()
        for row, wall, t, c, calls in zip(rows, walls, texts, capped, encoder_calls):
            row.walls.append(wall)
            if len(row.encoder_seconds) > calls:  # one entry per call: the round's total
                row.encoder_seconds[calls:] = [sum(row.encoder_seconds[calls:])]
            if row.texts is None:
                row.texts, row.capped = t, c
            logger.info("round %d %s: %.1f s", r + 1, row.label, wall)
    bar.close()


def summarize(rows, clips, group=lambda label: None) -> list[dict]:
    """Per row: median wall, RTF, speed-up against the first row of its `group(label)`, encoder share, WER and its
    difference to the first row with the paired interval, repetition loops."""
    refs = [c.text for c in clips]
    audio_s = sum(c.seconds for c in clips)
    scored = []
    for row in rows:
        row.loops = sum(k or repeated_ngram(t) for t, k in zip(row.texts, row.capped))
        e = word_errors(refs, row.texts)
        scored.append((row, e, {c.id: (k, w) for c, k, w in zip(clips, e["errors"], e["utterance_words"])}))
    _, ref_e, ref_clips = scored[0]
    group_wall = {}
    for row, _, _ in scored:
        group_wall.setdefault(group(row.label), statistics.median(row.walls))
    out = []
    for row, e, per_clip in scored:
        wall = statistics.median(row.walls)
        ref_wall = group_wall[group(row.label)]
        enc = statistics.median(row.encoder_seconds) if row.encoder_seconds else None
        out.append({
            "row": row.label, "wall_s": wall, "walls": row.walls, "rtf": wall / audio_s,
            "speedup": ref_wall / wall, "encoder_share": None if enc is None else enc / wall,
            "wer": e["wer"], "delta_wer": wer_difference(ref_e["wer"], e["wer"], ref_clips, per_clip),
            "loops": row.loops, "texts": row.texts,
        })
    return out


def markdown(results: list[dict], settings: dict) -> str:
    lines = [
        f"{settings['clips']} clips, {settings['audio_s']:.1f} s of audio; {settings['machine']}; torch "
        f"{settings['torch']}, {settings['threads']} threads; bf16 on this CPU: {settings['bf16']}; median of "
        f"{settings['rounds']} rounds, rows taking turns every {settings['chunk']} clips. Speed-up and Δ WER "
        "(95 % paired interval) against the first row.",
        "",
        "| row | wall s | RTF | speed-up | encoder share | WER % | Δ WER (95 % CI) | loops |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        share = "—" if r["encoder_share"] is None else f"{100 * r['encoder_share']:.0f} %"
        lines.append(f"| {r['row']} | {r['wall_s']:.1f} | {r['rtf']:.3f} | {r['speedup']:.2f}x | {share} | "
                     f"{100 * r['wer']:.2f} | {r['delta_wer']} | {r['loops']} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line for line in f if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"
