"""Long recordings (minutes each) transcribed whole, as a user would: the transformers pipeline's sequential long-form
and 30 s chunked decoding, dense and lite, the package's `Transcriber`, and faster-whisper with and without its
batched VAD pipeline, on the same base weights, each recording in its own language (given, from the metadata).

Every row runs in a spawned worker process of its own (`end_to_end.Worker`): its model is loaded there once, before
any timing, warmed up on the first 30 s of the shortest recording, and the wall time of a recording is measured in the
worker around the transcription call alone (the call returns the whole text: faster-whisper's lazy segments are
consumed inside it). The rows take turns recording by recording (see `run_rounds`). A row's time is its total over
the recordings in one round; the table gives the best (min) round, the median beside it.

`liteasr-hf benchmark-e2e --long` is the command line of this module.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import time

from ..audio import SAMPLING_RATE, load_clips
from .end_to_end import Worker, machine
from .run import repeated_ngram
from .wer import wer_difference, word_errors

logger = logging.getLogger(__name__)

ROWS = ("dense-sequential", "dense-chunked", "lite-sequential", "lite-transcribe", "fw-transcribe", "fw-batched")
# Not run unless named: faster-whisper's batched pipeline at lite-transcribe's batch size
EXTRA_ROWS = ("fw-batched-16",)
LITE_ROWS = ("lite-sequential", "lite-transcribe")
FW_ROWS = ("fw-transcribe", "fw-batched", "fw-batched-16")
REFERENCE, PEER = "dense-sequential", "fw-batched"  # the two speed-ups of the table are against these
BATCH_SIZE = 8  # dense-chunked's chunks and fw-batched's pieces per batch (lite-transcribe: the Transcriber's default)
LOOP_LENGTH_RATIO = 1.5  # a hypothesis this many times the reference's words long counts as a loop
WARMUP_SECONDS = 30
SETTLE_SECONDS = 0.25  # between two calls: the last worker's OpenMP threads stop spinning before the next one starts
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# ../shared/data/speech-long from the repository root: 7 recordings of 68-172 s, three of them English
DEFAULT_DATASET = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "speech-long"))


def check_rows(rows, *, lite: bool = True) -> list[str]:
    """The rows as a list; ValueError naming the valid rows for an unknown one, and for a lite row without `lite`."""
    unknown = [r for r in rows if r not in ROWS + EXTRA_ROWS]
    if unknown:
        raise ValueError(f"unknown long-audio row(s) {', '.join(map(repr, unknown))}; valid rows: {', '.join(ROWS + EXTRA_ROWS)}")
    if len(set(rows)) != len(rows):
        raise ValueError(f"a row is named twice in {' '.join(rows)}")
    if not lite and any(r in LITE_ROWS for r in rows):
        raise ValueError(f"rows {', '.join(r for r in rows if r in LITE_ROWS)} need --lite (a lite checkpoint)")
    return list(rows)


def load_recordings(dataset: str | None = None, *, languages=None, limit=None) -> list:
    """The recordings (`Clip`s with text and language) of a local audiofolder, only `languages` where given, the first
    `limit` of those."""
    dataset = dataset or DEFAULT_DATASET
    if not os.path.exists(dataset) and dataset == DEFAULT_DATASET:
        raise ValueError(f"no long-audio dataset at {dataset}: pass --dataset FOLDER (metadata.csv with file_name, "
                         "transcription, language)")
    clips = load_clips(dataset, require_text=True)
    if languages:
        clips = [c for c in clips if c.language in set(languages)]
    clips = clips[:limit] if limit else clips
    if not clips:
        raise ValueError(f"no recordings in {dataset}" + (f" in languages {', '.join(languages)}" if languages else ""))
    return clips


# ----------------------------------------------------------------------------------------------- in a row's worker
def _pipeline(path: str, *, lite: bool, chunked: bool, batch_size: int):
    """The transformers ASR pipeline with timestamps: sequential long-form (Whisper's own, window after window, each
    starting where the last one's timestamps ended) or 30 s chunks `batch_size` at a time; greedy, Whisper's token cap."""
    from transformers import pipeline

    from ..cpu import optimize_for_cpu
    from ..generation import generate_kwargs, quiet_length_warning
    from .run import load_model

    model, processor, _ = load_model(path)
    if lite:
        model = optimize_for_cpu(model)
    chunks = dict(chunk_length_s=30, batch_size=batch_size) if chunked else {}
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor, dtype=model.dtype, device=model.device, **chunks)

    def transcribe(audio, language):
        gen = generate_kwargs(model, language)
        del gen["max_new_tokens"]  # the checkpoint's max_length (448) a window, as faster-whisper
        with quiet_length_warning():
            out = asr({"raw": audio, "sampling_rate": SAMPLING_RATE}, return_timestamps=True, generate_kwargs=gen)
        return {"text": out["text"].strip()}
    return transcribe


def _transcriber(path: str):
    from ..transcription.engine import Transcriber

    engine = Transcriber(path)

    def transcribe(audio, language):
        result = engine.transcribe(audio, language=language)
        return {"text": result.text.strip(), "fallbacks": result.fallbacks, "engine_loops": result.loops}
    return transcribe


def _faster_whisper(folder: str, threads: int, batched: bool, batch_size: int):
    """faster-whisper int8, greedy (beam 1), its defaults otherwise: `transcribe` without VAD (its temperature
    fallback on), or `BatchedInferencePipeline` with its Silero VAD."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(folder, device="cpu", compute_type="int8", cpu_threads=threads)
    pipe = BatchedInferencePipeline(model) if batched else None

    def transcribe(audio, language):
        if pipe is not None:
            segments, _ = pipe.transcribe(audio, language=language, batch_size=batch_size, beam_size=1)
        else:
            segments, _ = model.transcribe(audio, language=language, beam_size=1, vad_filter=False)
        segments = list(segments)  # a generator: the decoding happens here
        return {"text": " ".join(s.text.strip() for s in segments),
                "sampled_segments": sum((s.temperature or 0) > 0 for s in segments)}
    return transcribe


def row_runner(row: str, model: str, threads: int, batch_size: int = BATCH_SIZE):
    """Runs in the row's worker: load `model` (a model folder; for the fw rows a CTranslate2 folder) for `row`, and
    return a callable((audio, language)) -> {"text", "wall_s", ...} that times the transcription call alone."""
    import torch

    check_rows([row])
    torch.set_num_threads(threads)
    if row in FW_ROWS:
        batched = row.startswith("fw-batched")
        transcribe = _faster_whisper(model, threads, batched, 16 if row == "fw-batched-16" else batch_size)
    elif row == "lite-transcribe":
        transcribe = _transcriber(model)
    else:
        transcribe = _pipeline(model, lite=row.startswith("lite"), chunked=row.endswith("chunked"), batch_size=batch_size)

    def run(item):
        audio, language = item
        t0 = time.perf_counter()
        out = transcribe(audio, language)
        out["wall_s"] = time.perf_counter() - t0
        return out
    return run


# ----------------------------------------------------------------------------------------------------- the parent
def start_workers(rows, models: dict, threads: int, recordings, batch_size: int = BATCH_SIZE, warmup: bool = True) -> dict:
    """{row: Worker}, started one after another (loading in turn); each one warmed up on the first WARMUP_SECONDS of
    the shortest recording (first calls pay one-time costs: allocations, kernel selection). On an error the workers
    started so far are closed and the RuntimeError is raised."""
    shortest = min(recordings, key=lambda c: len(c.audio))
    workers = {}
    try:
        for row in rows:
            workers[row] = Worker(row_runner, (row, models[row], threads, batch_size), row)
            if warmup:
                workers[row]((shortest.audio[: WARMUP_SECONDS * SAMPLING_RATE], shortest.language))
    except BaseException:
        for w in workers.values():
            w.close()
        raise
    return workers


def run_rounds(workers: dict, recordings, rounds: int, settle_s: float = SETTLE_SECONDS, progress=True) -> dict:
    """Transcribe every recording with every row, `rounds` times; {row: {"walls": [[s per recording] per round],
    "outputs": [[worker output per recording] per round]}}.

    Recording by recording, not row by row: on recording j of round r the rows run in their order rotated by j + r,
    so each row runs first, in the middle and last alike, and a burst of load from elsewhere on a shared machine lands
    on every row's share of that minute rather than on one row's whole round (row by row, one row's two rounds once
    took 36.6 and 65.5 s here while another row moved 13 %: `end_to_end.run_rows`). A recording is minutes of work
    for every row, so switching processes between calls costs nothing measurable (caches refill in milliseconds)."""
    from tqdm.auto import tqdm

    names = list(workers)
    raw = {n: {"walls": [], "outputs": []} for n in names}
    bar = tqdm(total=rounds * len(recordings) * len(names), desc="long audio (row x recording)", unit="call",
               disable=not progress)
    for r in range(rounds):
        for n in names:
            raw[n]["walls"].append([None] * len(recordings))
            raw[n]["outputs"].append([None] * len(recordings))
        for j, rec in enumerate(recordings):
            for k in range(len(names)):
                name = names[(j + r + k) % len(names)]
                out = workers[name]((rec.audio, rec.language))
                raw[name]["walls"][r][j], raw[name]["outputs"][r][j] = out.pop("wall_s"), out
                logger.info("round %d %s %s: %.1f s", r + 1, name, rec.id, raw[name]["walls"][r][j])
                bar.update()
                time.sleep(settle_s)
    bar.close()
    return raw


def _scored(recordings, texts, keep=None):
    """word_errors over the recordings at `keep` (all: None) and {id: (errors, words)} for paired intervals."""
    idx = range(len(recordings)) if keep is None else keep
    e = word_errors([recordings[i].text for i in idx], [texts[i] for i in idx], [recordings[i].language for i in idx])
    return e, {recordings[i].id: (k, w) for i, k, w in zip(idx, e["errors"], e["utterance_words"])}


def summarize(raw: dict, recordings) -> list[dict]:
    """Per row (in `raw`'s order): wall (best and median round), RTF, speed-ups against dense-sequential and
    fw-batched (None where that row did not run), WER overall and on the English recordings, Δ WER against
    dense-sequential with its paired 95 % interval over the recordings (two or more), loops, fallbacks, and per
    recording: wall, WER, words, loop. Texts and WER from round 1."""
    audio_s = sum(c.seconds for c in recordings)
    english = [i for i, c in enumerate(recordings) if c.language in (None, "en")]
    best = {name: min(map(sum, r["walls"])) for name, r in raw.items()}
    ref = _scored(recordings, [o["text"] for o in raw[REFERENCE]["outputs"][0]]) if REFERENCE in raw else None
    out = []
    for name, r in raw.items():
        outputs = r["outputs"][0]
        texts = [o["text"] for o in outputs]
        e, per_id = _scored(recordings, texts)
        en = _scored(recordings, texts, english)[0] if english else None
        fallbacks = [o.get("fallbacks") for o in outputs]
        recs = []
        for i, c in enumerate(recordings):
            ref_words, hyp_words = len(e["references"][i].split()), len(e["hypotheses"][i].split())
            recs.append({"id": c.id, "language": c.language, "seconds": c.seconds,
                         "wall_s": min(w[i] for w in r["walls"]), "walls": [w[i] for w in r["walls"]],
                         "wer": e["errors"][i] / max(e["utterance_words"][i], 1), "errors": e["errors"][i],
                         "words": e["utterance_words"][i], "hypothesis_words": hyp_words,
                         "loop": repeated_ngram(texts[i]) or hyp_words > LOOP_LENGTH_RATIO * ref_words,
                         **{k: v for k, v in outputs[i].items() if k != "text"}, "text": texts[i],
                         "same_text_every_round": all(o[i]["text"] == texts[i] for o in r["outputs"])})
        totals = [sum(w) for w in r["walls"]]
        delta = None
        if ref is not None:
            ref_e, ref_ids = ref
            delta = wer_difference(ref_e["wer"], e["wer"], *((ref_ids, per_id) if len(recordings) > 1 else ()))
        out.append({
            "row": name, "wall_s": best[name], "wall_median_s": statistics.median(totals), "round_walls": totals,
            "rtf": best[name] / audio_s,
            "x_dense_sequential": best[REFERENCE] / best[name] if REFERENCE in best else None,
            "x_fw_batched": best[PEER] / best[name] if PEER in best else None,
            "wer": e["wer"], "wer_en": en["wer"] if en else None, "delta_wer": delta,
            "loops": sum(x["loop"] for x in recs),
            "fallbacks": None if all(f is None for f in fallbacks) else sum(f or 0 for f in fallbacks),
            "recordings": recs,
        })
    return out


def _cell(value, fmt: str, none="—") -> str:
    return none if value is None else format(value, fmt)


def markdown(results: list[dict], settings: dict) -> str:
    """The summary table, then WER per recording."""
    recs = settings["recordings"]
    cpu = settings["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(cpu["flags"])
    lines = [
        f"{len(recs)} recordings ({sum(r['language'] == 'en' for r in recs)} English), {settings['audio_s']:.1f} s of "
        f"audio, language given; {cpu['model_name']} ({flags}), {settings['threads']} threads; torch "
        f"{settings['versions']['torch']}, transformers {settings['versions']['transformers']}, ctranslate2 "
        f"{settings['versions']['ctranslate2']}. Wall: best (min) of {settings['rounds']} rounds (median in brackets), "
        "timed in each row's worker around the transcription call; rows take turns recording by recording. "
        f"x: speed-up against that row; Δ WER against {REFERENCE} with its 95 % paired interval over the recordings.",
        "",
        f"| row | wall s | RTF | x {REFERENCE} | x {PEER} | WER % | WER % en | Δ WER (95 % CI) | loops | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        wer_en = None if r["wer_en"] is None else 100 * r["wer_en"]
        lines.append(f"| {r['row']} | {r['wall_s']:.1f} ({r['wall_median_s']:.1f}) | {r['rtf']:.3f} | "
                     f"{_cell(r['x_dense_sequential'], '.2f')} | {_cell(r['x_fw_batched'], '.2f')} | {100 * r['wer']:.2f} | "
                     f"{_cell(wer_en, '.2f')} | {r['delta_wer'] or '—'} | {r['loops']} | {_cell(r['fallbacks'], 'd')} |")
    lines += ["", "WER % per recording (* a loop):", "",
              "| row | " + " | ".join(f"{r['id']} ({r['language']}, {r['seconds']:.0f} s)" for r in recs) + " |",
              "|---" * (len(recs) + 1) + "|"]
    for r in results:
        cells = [f"{100 * x['wer']:.1f}{' *' if x['loop'] else ''}" for x in r["recordings"]]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_info() -> dict:
    """lscpu's model name and which of CPU_FLAGS the CPU has (/proc/cpuinfo where lscpu is missing)."""
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(fields.get("Flags", "").split())
    if not flags and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "").split())
    return {"model_name": fields.get("Model name", "").strip() or machine(), "cores": os.cpu_count(),
            "flags": {f: f in flags for f in CPU_FLAGS}}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "ctranslate2", "faster-whisper"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def benchmark(rows, recordings, models: dict, *, threads: int, rounds: int, batch_size: int = BATCH_SIZE,
              progress=True) -> tuple[list[dict], dict]:
    """(results, settings): every row in its worker over `rounds` rounds, summarized. `models`: {row: folder}."""
    workers = start_workers(rows, models, threads, recordings, batch_size)
    try:
        raw = run_rounds(workers, recordings, rounds, progress=progress)
    finally:
        for w in workers.values():
            w.close()
    settings = {
        "rows": list(rows), "models": {r: models[r] for r in rows}, "threads": threads, "rounds": rounds,
        "statistic": "min of rounds (median also given)", "batch_size": batch_size, "warmup_s": WARMUP_SECONDS,
        "settle_s": SETTLE_SECONDS, "audio_s": sum(c.seconds for c in recordings), "greedy": True,
        "recordings": [{"id": c.id, "language": c.language, "seconds": c.seconds} for c in recordings],
        "cpu": cpu_info(), "versions": versions(),
    }
    return summarize(raw, recordings), settings
