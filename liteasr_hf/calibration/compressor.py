"""The LiteASR recipe as a Python API: audio -> statistics -> spectra -> ranks -> factors -> refinement -> stages ->
lite model -> checkpoint and model card; and `load_model`, the one loader of Whisper and lite Whisper checkpoints.

    from liteasr_hf import CompressionConfig, compress, save_compressed
    lite = compress(model, processor, clips, CompressionConfig(target_size=0.8))
    save_compressed(lite, "lite-whisper-base", processor)

`Compressor` keeps what several compressions of one model and one calibration set share (one statistics pass,
spectra per padding weight, log-mels, sensitivity gains, the dense model's outputs and transcripts), so a sweep
compresses at many sizes for the price of one pass. Under `accelerate launch` the statistics pass is sharded over
the processes and summed; the rest runs on the main process (`compress` returns None elsewhere).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

import torch

from .card import INFO_FILE, render_model_card
from .config import CompressionConfig
from .features import features_of
from .sensitivity import PROBE_CLIPS
from .stats import CalibrationStats, collect, spectra

logger = logging.getLogger(__name__)


def _windows(audio) -> tuple[list[tuple[str, object]], int]:
    """([(id, 16 kHz mono array of at most 30 s)], number of clips) from Clips, arrays, or (id, array) pairs; longer
    audio is cut into windows."""
    from ..audio import Clip, to_mono_16k, window_items

    clips = []
    for i, a in enumerate(audio):
        if isinstance(a, Clip):
            clips.append(a)
        elif isinstance(a, tuple) and len(a) == 2:
            clips.append(Clip(str(a[0]), to_mono_16k(a[1], 16_000, str(a[0]))))
        else:
            clips.append(Clip(f"clip{i}", to_mono_16k(a, 16_000, f"clip {i}")))
    if not clips:
        raise ValueError("no calibration audio: give at least one clip")
    return window_items(clips), len(clips)


def load_model(name: str, device="cpu", dtype=None, *, dense: bool = False):
    """(model, processor, local path or Hub id) for a bundled name ("bundled/whisper-base"), a local folder or a Hub
    id: a Whisper or lite Whisper through the Auto classes. `dense`: only a dense Whisper will do (a LiteASR checkpoint
    or another model type is a ValueError, before any weight is read)."""
    import liteasr_hf  # noqa: F401  registers the lite-whisper model type with the Auto classes
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, PretrainedConfig

    from ..conversion import load_error, resolve_model

    path = resolve_model(name)
    try:
        if dense:
            cfg, _ = PretrainedConfig.get_config_dict(path)
            archs = " ".join(cfg.get("architectures") or [])
            if "lite" in cfg.get("model_type", "").lower() or "LiteWhisper" in archs or cfg.get("low_rank_config"):
                raise ValueError(f"{name} is already a LiteASR (low-rank) model; calibrate its dense Whisper original instead")
            if cfg.get("model_type") != "whisper":
                raise ValueError(f"{name} is not a Whisper model (model_type {cfg.get('model_type')!r})")
        model = AutoModelForSpeechSeq2Seq.from_pretrained(path, dtype=dtype or torch.float32)
        processor = AutoProcessor.from_pretrained(path)
    except OSError as e:  # offline, or a Hub id that does not exist
        raise load_error(name, path, e) from e
    return model.to(device).eval(), processor, path


def load_whisper(name: str, device="cpu", dtype=torch.float32):
    """(dense WhisperForConditionalGeneration, WhisperProcessor) to compress: `load_model(..., dense=True)`, the
    model named as given ("bundled/whisper-base") for the card."""
    model, processor, _ = load_model(name, device, dtype, dense=True)
    model.name_or_path = name
    return model, processor


class Compressor:
    """A dense Whisper model and its calibration audio (Clips from `liteasr_hf.audio.load_clips`, 16 kHz mono
    arrays, or (id, array) pairs), compressed under any `CompressionConfig` by `compress`.

    resume_stats: statistics files to start from (merged; windows already counted are skipped);
    save_stats: where the statistics are saved, every `save_every` windows during the pass and at its end.
    """

    def __init__(self, model, processor, audio, *, batch_size: int = 8, resume_stats: Sequence[str] = (),
                 save_stats: str | None = None, save_every: int = 32, progress: bool = True):
        if getattr(model.config, "model_type", None) != "whisper":
            raise ValueError(f"compress a dense Whisper model (model_type 'whisper'), got {getattr(model.config, 'model_type', None)!r}")
        self.model, self.processor = model.eval(), processor
        self._device = next(model.parameters()).device
        self.windows, self.num_clips = _windows(audio)
        self.batch_size, self.progress = batch_size, progress
        self.resume_stats, self.save_stats, self.save_every = list(resume_stats), save_stats, save_every
        self._stats = None
        self._spectra: dict = {}
        self._gains: dict = {}
        self._features = self._targets = self._tokens = None

    @property
    def device(self):
        """Where the dense model computes (it steps aside to the CPU while a lite model refines)."""
        return self._device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    # ---- what compressions share ----------------------------------------------------------------------

    def statistics(self) -> CalibrationStats | None:
        """The dense model's statistics over the windows (one pass, cached). Under accelerate each process counts
        its shard and the sums are reduced; None on processes other than the main one."""
        from accelerate import PartialState

        if self._stats is None:
            state = PartialState()
            stats = CalibrationStats.for_encoder(self.model.get_encoder())
            for path in self.resume_stats:
                loaded = CalibrationStats.load(path)
                if {n: s.dim for n, s in loaded.linears.items()} != {n: s.dim for n, s in stats.linears.items()}:
                    raise ValueError(f"{path} holds statistics of a different model")
                if not state.is_main_process:  # the sums are reduced once: other processes only skip what is seen
                    loaded = CalibrationStats({n: s.dim for n, s in stats.linears.items()}, loaded.seen)
                stats.merge_(loaded)
            shard = self.windows[state.process_index :: state.num_processes]
            seen = set(stats.seen)
            if any(i not in seen for i, _ in shard):
                save = self.save_stats if state.num_processes == 1 else None  # shards are saved once, after the reduce
                stats = collect(self.model, self.processor.feature_extractor, shard, stats, batch_size=self.batch_size,
                                device=self.device, dtype=self.dtype, total=len(shard), save_every=self.save_every,
                                save_path=save, progress=self.progress)
            stats.all_reduce_()
            if self.save_stats and state.is_main_process:
                stats.save(self.save_stats)
            if not state.is_main_process:
                return None
            self._stats = stats
        return self._stats

    def spectra(self, padding_weight) -> dict:
        """{linear: (mean, eigenvalues, eigenvectors)} of the statistics at this padding weight (cached)."""
        if padding_weight not in self._spectra:
            self._spectra[padding_weight] = spectra(self.statistics(), padding_weight, progress=self.progress)
        return self._spectra[padding_weight]

    def features(self):
        """(log-mels, real-audio frames) of every window (cached)."""
        if self._features is None:
            self._features = features_of(self.processor.feature_extractor, [a for _, a in self.windows])
        return self._features

    def gains(self, padding_weight, model=None, pcas=None) -> dict:
        """Each linear's measured sensitivity (sensitivity.measure_gains) on the first PROBE_CLIPS windows: of the
        dense model (cached), or of `model` with its `pcas` (a later stage's)."""
        from .sensitivity import measure_gains

        if model is None and padding_weight in self._gains:
            return self._gains[padding_weight]
        feats, real = self.features()
        gains = measure_gains(model or self.model, feats[:PROBE_CLIPS], real[:PROBE_CLIPS],
                              self.spectra(padding_weight) if model is None else pcas, pad_weight=padding_weight,
                              batch_size=self.batch_size, progress=self.progress)
        if model is None:
            self._gains[padding_weight] = gains
        return gains

    def teacher(self, outputs: bool, tokens: bool):
        """(dense encoder outputs or None, dense transcripts with their log-probabilities or None) for refinement,
        each computed once and only when asked for."""
        from .refine import teacher_outputs, teacher_tokens

        feats, _ = self.features()
        if outputs and self._targets is None:
            self._targets = teacher_outputs(self.model, feats, self.batch_size, progress=self.progress)
        if tokens and self._tokens is None:
            self._tokens = teacher_tokens(self.model, feats, self.batch_size, progress=self.progress)
        return self._targets if outputs else None, self._tokens if tokens else None

    # ---- the recipe ---------------------------------------------------------------------------------------

    def compress(self, config: CompressionConfig | None = None):
        """The lite model (LiteWhisperForConditionalGeneration) for `config`, its record in `lite.liteasr_calibration`
        (what save_compressed writes into calibration.json). The dense model is left unchanged."""
        from ..lite_whisper.configuration_lite_whisper import ENCODER_FRAME_SECONDS, check_padding_stride
        from .factors import build_lite_model, densify, factorize
        from .ranks import encoder_size

        config = config or CompressionConfig()
        t0 = time.perf_counter()
        self.model.to(self._device)  # back from the CPU, where the last refinement left it
        window = self.model.config.max_source_positions * ENCODER_FRAME_SECONDS
        buckets, margin = config.context(window)
        # before the statistics pass, not when the result is assigned to the lite config after it
        check_padding_stride(config.padding_stride, self.model.config.max_source_positions, "padding_stride")
        if self.statistics() is None:
            return None
        current, sizes, stages, lite = self.model, [*config.stages, config.target_size], [], None
        for i, size in enumerate(sizes):
            if len(sizes) > 1:
                logger.info("stage %d/%d: %.0f %% of the dense encoder", i + 1, len(sizes), 100 * size)
            if i:  # the next stage compresses what the last one built, re-measured on the calibration windows
                current = densify(self.model, lite).to(self.device)
                stats = collect(current, self.processor.feature_extractor, self.windows,
                                CalibrationStats.for_encoder(current.get_encoder()), batch_size=self.batch_size,
                                device=self.device, dtype=self.dtype, total=len(self.windows), progress=self.progress)
                pcas = spectra(stats, config.padding_weight, progress=self.progress)
                gains = None
            else:
                pcas = self.spectra(config.padding_weight)
                gains = self.gains(config.padding_weight) if size is not None else None
            ranks, selection = self._ranks(current, pcas, size, config, gains)
            enc = current.get_encoder()
            lite = build_lite_model(current, ranks, factorize(enc, pcas, ranks, next(enc.parameters()).dtype))
            stage = {"size": size}
            if config.refine_steps:
                settings = lite.get_encoder().context_settings().replace(buckets=buckets, margin=margin,
                                                                         padding_stride=config.padding_stride)
                stage["refine"] = self._refine(lite, config, settings)
            stages.append(stage)
            current = None  # a later stage's densified copy is spent once its lite model exists
        lite.config.encoder_context_buckets, lite.config.encoder_context_margin = buckets, margin
        lite.config.encoder_padding_stride = config.padding_stride
        if config.refine_steps:
            selection["refine"] = stages[-1]["refine"]
        if config.stages:
            selection["stages"] = stages
            selection["description"] += ", reached in stages " + " → ".join(f"{st['size']:.0%}" for st in stages)
        encoder = self.model.get_encoder()
        lite_params, dense_params = encoder_size(encoder, ranks)
        stats = self.statistics()
        lite.liteasr_calibration = {
            "base_model": getattr(self.model, "name_or_path", "") or "unknown",
            "num_layers": len(encoder.layers),
            "ranks": ranks,
            "size": {"lite": lite_params, "dense": dense_params, "fraction": lite_params / dense_params},
            "selection": selection,
            "context": {"buckets": buckets, "margin": margin, "padding_stride": config.padding_stride},
            "config": config.to_dict(),
            "calibration": {"clips": self.num_clips, "windows": len(stats.seen), "frames": stats.frames(), "padding_weight": config.padding_weight,
                            "seed": config.seed, "seconds": time.perf_counter() - t0, "device": str(self.device),
                            "dtype": str(self.dtype).removeprefix("torch."), "peak_memory_gb": peak_memory_gb(self.device)},
        }
        return lite.eval()

    def _ranks(self, model, pcas, size, config, gains):
        """(ranks, selection record): `size` by sensitivity, or the θ rule (size None)."""
        from .ranks import linear_budget, linear_dims, theta_ranks
        from .sensitivity import allocate

        encoder = model.get_encoder()
        dims = linear_dims(encoder)
        evals = {n: p[1] for n, p in pcas.items()}
        common = {"refine_steps": config.refine_steps, "refine_context": config.refine_context}
        if size is not None:
            if gains is None:  # a later stage: its own model's gains
                gains = self.gains(config.padding_weight, model, pcas)
            ranks = allocate(evals, dims, gains, linear_budget(encoder, size))
            return ranks, {"mode": "target-size", "target_size": size, "allocation": "sensitivity", **common,
                           "description": f"target size {size:.0%} of the dense encoder, greedy by measured effect on the encoder output per parameter"}
        ta, tm = config.thetas
        custom = config.label == "custom"
        label = "custom θ" if custom else f"preset {config.preset}"
        return theta_ranks(evals, dims, ta, tm), {
            "mode": "theta" if custom else config.preset, "preset": None if custom else config.preset, "theta_attn": ta,
            "theta_mlp": tm, **common, "description": f"{label}: θ attention {ta}, θ MLP {tm} (smallest multiple of 16 above θ; eq. 8)"}

    def _refine(self, lite, config, context) -> dict:
        from .refine import refine

        feats, real = self.features()
        # at the context the loss is the decoder KL alone (see refine): no encoder-output targets to compute
        mse_weight = 0.0 if config.refine_context else 1.0
        targets, tokens = self.teacher(outputs=bool(mse_weight), tokens=bool(config.refine_kl))
        # The teacher's outputs are computed, and the lite model shares no tensor with the dense one: off the
        # accelerator, the dense model leaves refinement its memory (large-v3 in fp32: 6.2 GB).
        self.model.to("cpu")
        done = refine(lite, feats, real, targets, token_targets=tokens, kl_weight=config.refine_kl, steps=config.refine_steps,
                      lr=config.refine_lr, warmup=config.refine_warmup, pad_weight=config.padding_weight, seed=config.seed, progress=self.progress, context=context if config.refine_context else None,
                      mse_weight=mse_weight)
        return {k: done[k] for k in ("steps", "initial", "best")}


def peak_memory_gb(device) -> float:
    """Peak memory of this process: the accelerator's allocations, or on the CPU the resident set."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def compress(model, processor, audio, config: CompressionConfig | None = None, **kwargs):
    """Compress `model` (a dense WhisperForConditionalGeneration) with calibration `audio` under `config` (default:
    `CompressionConfig()`); keyword arguments go to `Compressor`. Returns the lite model."""
    return Compressor(model, processor, audio, **kwargs).compress(config)


def context_only(model, config: CompressionConfig | None = None):
    """The dense weights unchanged, as lite-whisper with no low-rank layer and the config's dynamic encoder context:
    what users who do not compress can still gain."""
    from ..lite_whisper import LiteWhisperForConditionalGeneration
    from ..lite_whisper.configuration_lite_whisper import ENCODER_FRAME_SECONDS

    config = config or CompressionConfig()
    lite = LiteWhisperForConditionalGeneration.from_whisper(model)
    buckets, margin = config.context(model.config.max_source_positions * ENCODER_FRAME_SECONDS)
    lite.config.encoder_context_buckets, lite.config.encoder_context_margin = buckets, margin
    lite.config.encoder_padding_stride = config.padding_stride
    return lite


def save_compressed(lite, folder: str, processor=None, *, base_model: str | None = None, dataset: str | None = None,
                    command: str | None = None, repo: str | None = None) -> str:
    """Write a complete lite checkpoint to `folder`: weights and config (the published LiteASR layout), the code files
    for trust_remote_code, generation config, processor files, calibration.json (how it was made: the config, ranks,
    sizes, data) and the model card (README.md). Returns the folder."""
    from .. import __version__
    from ..lite_whisper import save_lite_checkpoint

    record = getattr(lite, "liteasr_calibration", None)
    if record is None:
        raise ValueError("save_compressed takes a model returned by compress(); save other lite models with save_lite_checkpoint")
    try:  # an unwritable folder fails before anything is written
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {folder} ({e.strerror or e})") from e
    save_lite_checkpoint(lite, folder, processor)
    calibration = dict(record["calibration"], dataset=dataset or "calibration audio given to compress()",
                       command=command or "liteasr_hf.compress(...)")
    info = {"name": os.path.basename(os.path.abspath(folder)), "version": __version__,
            **{k: v for k, v in record.items() if k != "calibration"}, "calibration": calibration, "results": []}
    info["base_model"] = base_model or record["base_model"]
    with open(os.path.join(folder, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    render_model_card(folder, repo=repo)
    return folder
