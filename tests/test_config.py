"""CompressionConfig and compress(): validation, serialisation, and every option through the public API on a tiny
random Whisper (CPU, seconds)."""

import json

import pytest
import torch

from liteasr_hf import CompressionConfig, Compressor, compress, save_compressed
from liteasr_hf.calibration import refine as refine_module
from liteasr_hf.calibration.ranks import linear_budget, linear_dims, theta_ranks
from liteasr_hf.calibration.sensitivity import allocate
from liteasr_hf.lite_whisper.context_lite_whisper import ContextSettings
from modeling_utils import tiny_audio, tiny_processor, tiny_whisper


@pytest.mark.parametrize("kwargs, field", [
    ({"target_size": 0.0}, "target_size"), ({"target_size": 1.2}, "target_size"), ({"target_size": "0.8"}, "target_size"),
    ({"theta_attn": 1.0}, "theta_attn"), ({"theta_mlp": 0.0}, "theta_mlp"), ({"preset": "fastest"}, "preset"),
    ({"preset": "fast", "target_size": 0.7}, "target_size"), ({"padding_weight": 1.5}, "padding_weight"),
    ({"stages": (0.7,)}, "stages"), ({"stages": (0.9,), "preset": "fast"}, "stages"), ({"stages": (1.0,)}, "stages"),
    ({"refine_steps": -1}, "refine_steps"), ({"refine_steps": 2.5}, "refine_steps"), ({"refine_lr": 0}, "refine_lr"),
    ({"refine_warmup": -2}, "refine_warmup"), ({"refine_kl": -1}, "refine_kl"), ({"refine_context": True}, "refine_context"),
    ({"context_buckets": [40]}, "context_buckets"), ({"context_buckets": [15, 10]}, "context_buckets"),
    ({"context_buckets": [10.01]}, "context_buckets"), ({"context_buckets": []}, "context_buckets"),
    ({"context_buckets": "full"}, "context_buckets"), ({"context_margin": -1}, "context_margin"), ({"seed": -1}, "seed"),
    ({"padding_stride": 0}, "padding_stride"), ({"padding_stride": 2.5}, "padding_stride"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CompressionConfig(**kwargs)


def test_defaults_and_round_trip():
    default = CompressionConfig()
    assert (default.target_size, default.padding_weight, default.context_buckets) == (0.8, 0.5, "auto")
    assert default.label == "size80" and CompressionConfig(preset="c").label == "fast"
    assert CompressionConfig(theta_attn=0.95).thetas == (0.95, 0.999) and CompressionConfig(theta_attn=0.95).label == "custom"
    for config in (default, CompressionConfig(preset="a", padding_weight=None, context_buckets=None),
                   CompressionConfig(target_size=0.6, stages=[0.8], refine_steps=5, refine_kl=1.0, refine_context=True,
                                     context_buckets=[8, 10], context_margin=0.5, seed=3)):
        d = json.loads(json.dumps(config.to_dict()))  # what calibration.json holds
        assert CompressionConfig.from_dict(d) == config
    with pytest.raises(ValueError, match="unknown compression option.*theta"):
        CompressionConfig.from_dict({"theta": 0.9})


def test_removed_options_load_at_their_only_value():
    """A calibration.json of an earlier version holds the options removed since: at the value that is now the only
    behaviour they load; any other value names the option."""
    old = {**CompressionConfig(target_size=0.65, refine_steps=300).to_dict(),
           "allocation": "sensitivity", "sequential": "off", "probe_clips": 8, "refine_train": "factors"}
    assert CompressionConfig.from_dict(old) == CompressionConfig(target_size=0.65, refine_steps=300)
    for name, value in (("allocation", "variance"), ("sequential", "dense+residual"), ("probe_clips", 60),
                        ("refine_train", "all")):
        with pytest.raises(ValueError, match=f"{name} was removed"):
            CompressionConfig.from_dict({**old, name: value})
    with pytest.raises(TypeError):  # the Python API takes only the current fields
        CompressionConfig(sequential="off")


def test_every_field_has_help():
    """The command line's options and the class docstring are built from each field's help."""
    from dataclasses import fields

    for f in fields(CompressionConfig):
        assert f.metadata["help"] and f.metadata["group"] in ("compression", "refinement", "context"), f.name
        assert f"{f.name}: {f.metadata['help']}" in " ".join(CompressionConfig.__doc__.split())


def test_auto_context_fits_the_window():
    assert CompressionConfig().context(30.0) == ([15.0, 20.0], 1.0) and CompressionConfig().padding_stride == 4
    assert CompressionConfig().context(16.0) == ([15.0], 1.0)
    assert CompressionConfig().context(1.0) == (None, 1.0)  # no default bucket is shorter: the full window
    assert CompressionConfig(context_buckets=[0.5], context_margin=0.2).context(1.0) == ([0.5], 0.2)
    with pytest.raises(ValueError, match="context_buckets"):
        CompressionConfig(context_buckets=[10]).context(1.0)


# ---- every option through compress() -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compressor(tmp_path_factory):
    processor = tiny_processor(tmp_path_factory.mktemp("vocab"))
    return Compressor(tiny_whisper(), processor, [tiny_audio(seed=i) for i in range(6)], batch_size=3, progress=False)


def ranks_of(lite):
    return lite.liteasr_calibration["ranks"]


def test_size_options(compressor):
    enc = compressor.model.get_encoder()
    dims = linear_dims(enc)
    small, large = (compressor.compress(CompressionConfig(target_size=s)) for s in (0.7, 0.9))
    assert small.liteasr_calibration["size"]["fraction"] <= 0.7 < large.liteasr_calibration["size"]["fraction"] <= 0.9
    gains = compressor.gains(0.5)
    assert ranks_of(small) == allocate({n: p[1] for n, p in compressor.spectra(0.5).items()}, dims, gains, linear_budget(enc, 0.7))
    evals = {n: p[1] for n, p in compressor.spectra(0.5).items()}
    for config in (CompressionConfig(preset="fast"), CompressionConfig(theta_attn=0.8), CompressionConfig(theta_mlp=0.8, preset="a")):
        lite = compressor.compress(config)
        assert ranks_of(lite) == theta_ranks(evals, dims, *config.thetas)
        assert lite.liteasr_calibration["selection"]["theta_attn"] == config.thetas[0]


def test_statistics_options(compressor):
    one = compressor.compress(CompressionConfig(target_size=0.8))
    flat = compressor.compress(CompressionConfig(target_size=0.8, padding_weight=None))
    assert flat.liteasr_calibration["calibration"]["padding_weight"] is None
    name = next(n for n, k in ranks_of(one).items() if k)
    key = f"model.encoder.{name}.weight1"
    w = {m: dict(lite.named_parameters())[key] for m, lite in (("one", one), ("flat", flat)) if key in dict(lite.named_parameters())}
    assert "flat" not in w or not torch.equal(w["one"], w["flat"])
    staged = compressor.compress(CompressionConfig(target_size=0.7, stages=[0.85]))
    assert [st["size"] for st in staged.liteasr_calibration["selection"]["stages"]] == [0.85, 0.7]
    assert staged.liteasr_calibration["size"]["fraction"] <= 0.7


def test_refinement_and_context_options(compressor, monkeypatch):
    calls = []
    real = refine_module.refine

    def spy(lite, *args, **kwargs):
        calls.append({**kwargs, "targets": args[2]})
        return real(lite, *args, **kwargs)

    monkeypatch.setattr(refine_module, "refine", spy)
    config = CompressionConfig(target_size=0.8, refine_steps=2, refine_lr=3e-5, refine_warmup=1, refine_kl=0.5, refine_context=True,
                               context_buckets=[0.6], context_margin=0.1, padding_stride=2, seed=7)
    lite = compressor.compress(config)
    (kw,) = calls
    assert (kw["steps"], kw["lr"], kw["warmup"], kw["kl_weight"], kw["seed"], kw["pad_weight"]) == (2, 3e-5, 1, 0.5, 7, 0.5)
    # the student is refined at the context it will run: buckets, margin and the padding stride
    want = ContextSettings([0.6], 0.1, 2, full_frames=lite.config.max_source_positions * 2)
    assert kw["context"] == want and kw["mse_weight"] == 0.0 and kw["token_targets"] is not None
    assert kw["targets"] is None  # KL alone at the context: no encoder-output teacher pass
    assert lite.liteasr_calibration["selection"]["refine"]["steps"] == 2
    assert (lite.config.encoder_context_buckets, lite.config.encoder_context_margin, lite.config.encoder_padding_stride) == ([0.6], 0.1, 2)
    assert lite.liteasr_calibration["config"] == config.to_dict()
    calls.clear()
    compressor.compress(CompressionConfig(target_size=0.8, refine_steps=1))
    assert calls[0]["context"] is None and calls[0]["mse_weight"] == 1.0 and calls[0]["token_targets"] is None
    assert calls[0]["targets"].shape[0] == 6  # the MSE's targets: one per calibration clip


def test_compress_and_save(tmp_path):
    processor = tiny_processor(tmp_path / "vocab")
    model = tiny_whisper()
    lite = compress(model, processor, [tiny_audio(seed=i) for i in range(4)], CompressionConfig(target_size=0.8), progress=False)
    out = save_compressed(lite, str(tmp_path / "lite"), processor, dataset="four synthetic clips")
    info = json.loads((tmp_path / "lite" / "calibration.json").read_text())
    assert CompressionConfig.from_dict(info["config"]) == CompressionConfig(target_size=0.8)
    assert info["calibration"]["clips"] == 4 and info["calibration"]["dataset"] == "four synthetic clips"
    assert "| layer | q_proj" in (tmp_path / "lite" / "README.md").read_text()
    from liteasr_hf import LiteWhisperForConditionalGeneration

    assert LiteWhisperForConditionalGeneration.from_pretrained(out).config.low_rank_config == lite.config.low_rank_config
    with pytest.raises(ValueError, match="dense Whisper"):
        compress(lite, processor, [tiny_audio()])
    with pytest.raises(ValueError, match="no calibration audio"):
        compress(model, processor, [])
    with pytest.raises(ValueError, match="compress"):
        save_compressed(model, str(tmp_path / "x"), processor)
