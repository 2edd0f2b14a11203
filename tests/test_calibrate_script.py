"""End to end on the real tiny.en (bundled, offline): calibrate on a few shipped clips, compress, transcribe;
and the calibrate command itself (`liteasr-hf calibrate`, `scripts/calibrate.py`): the default job, resume from
statistics, errors, Hub push offline."""

import json
import os
import subprocess
import sys

import pytest
import torch

from liteasr_hf.audio import load_clips
from liteasr_hf.calibration.factors import build_lite_model, factorize
from liteasr_hf.calibration.ranks import encoder_size, linear_dims, preset_thetas, theta_ranks
from liteasr_hf.calibration.stats import collect, spectra

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "calibrate.py")
pytestmark = pytest.mark.slow


def calibrate_main(argv):
    from liteasr_hf.cli.calibrate import main

    return main(argv)


@pytest.fixture(scope="module")
def tiny_en():
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from liteasr_hf.conversion import TEST_MODEL, resolve_model

    path = resolve_model(TEST_MODEL)
    return WhisperForConditionalGeneration.from_pretrained(path).eval(), WhisperProcessor.from_pretrained(path), path


CAL_FILES = ["cmu_arctic_aew_a0001.flac", "cmu_arctic_axb_a0004.flac", "osr_us_000_0034_s01.flac", "osr_us_000_0034_s05.flac"]
EVAL_FILES = ["jfk_inaugural_1961.flac", "librivox_sense_and_sensibility_01_0870.flac", "pocketsphinx_goforward.flac",
              "librispeech_1272_forte_0.flac"]


@pytest.fixture(scope="module")
def tiny_stats(tiny_en):
    """Statistics of tiny.en on a handful of shipped calibration clips (both sources)."""
    model, processor, _ = tiny_en
    clips = load_clips(files=CAL_FILES)
    return collect(model, processor.feature_extractor, [(c.id, c.audio) for c in clips], progress=False)


@pytest.fixture(scope="module")
def eval_clips(tiny_en):
    """Evaluation clips (JFK first) and the dense model's tokens and texts on them."""
    model, processor, _ = tiny_en
    clips = load_clips(files=EVAL_FILES)
    clips.sort(key=lambda c: EVAL_FILES.index(c.id))
    return clips, *transcribe(model, processor, clips)


def transcribe(model, processor, clips):
    feats = processor.feature_extractor([c.audio for c in clips], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        tokens = model.generate(feats, num_beams=1, max_new_tokens=96)
    return tokens, processor.batch_decode(tokens, skip_special_tokens=True)


def wer(refs, hyps):
    import jiwer  # here, not at the top: the GPU check machine collects this file without jiwer
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    norm = EnglishTextNormalizer({})
    return jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])


def compress(model, stats, theta_attn, theta_mlp):
    enc = model.get_encoder()
    pcas = spectra(stats, 0.5)
    ranks = theta_ranks({n: p[1] for n, p in pcas.items()}, linear_dims(enc), theta_attn, theta_mlp)
    return build_lite_model(model, ranks, factorize(enc, pcas, ranks)).eval(), encoder_size(enc, ranks)


def test_near_one_theta_gives_dense_tokens(tiny_en, tiny_stats, eval_clips):
    model, processor, _ = tiny_en
    clips, ref, _ = eval_clips
    lite, (size, dense) = compress(model, tiny_stats, 0.99999, 0.99999)
    assert sum(p.numel() for p in lite.get_encoder().parameters()) == size  # the size accounting is the built model's
    out, _ = transcribe(lite, processor, clips[:1])  # JFK
    eos = model.generation_config.eos_token_id

    def upto_eos(t):  # batched outputs carry eos + padding, a single one may end without eos
        t = t.tolist()
        return t[: t.index(eos)] if eos in t else t

    assert upto_eos(out[0]) == upto_eos(ref[0])


def test_quality_preset_size_and_wer(tiny_en, tiny_stats, eval_clips):
    model, processor, _ = tiny_en
    clips, _, dense_texts = eval_clips
    lite, (size, dense) = compress(model, tiny_stats, *preset_thetas("quality"))
    assert 0.80 < size / dense < 0.99  # 96 % on 60 clips of speech-dev; fewer clips -> lower ranks
    lite_encoder = sum(p.numel() for p in lite.get_encoder().parameters())
    assert lite_encoder == size
    refs = [c.text for c in clips]
    dense_wer, lite_wer = wer(refs, dense_texts), wer(refs, transcribe(lite, processor, clips)[1])
    # Measured: 1.75 % against 0.00 % (2 words of the 4 clips' ~114). The quality preset keeps 99.9 % of every linear's
    # variance; 3.5 points (4 words) is twice what it costs here, far below what a broken factorization costs (> 50).
    assert lite_wer <= dense_wer + 0.035, (lite_wer, dense_wer)


def run_script(args, cwd, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, SCRIPT, "--no-progress", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_default_job(tmp_path):
    """The main job with default options (on tiny.en here; `make demo` runs base). --no-progress only quiets logs."""
    r = run_script(["--model", "bundled/whisper-tiny.en"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "outputs" / "lite-whisper-tiny.en-size80"
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md", "calibration.json"):
        assert (out / f).exists(), f
    assert "of dense" in r.stdout and "peak memory" in r.stdout
    info = json.loads((out / "calibration.json").read_text())
    assert info["selection"]["allocation"] == "sensitivity" and info["calibration"]["padding_weight"] == 0.5
    assert info["calibration"]["clips"] == 21 and info["size"]["fraction"] <= 0.8
    from liteasr_hf import LiteWhisperForConditionalGeneration

    lite = LiteWhisperForConditionalGeneration.from_pretrained(str(out))
    assert lite.config.low_rank_config and sum(p.numel() for p in lite.get_encoder().parameters()) == info["size"]["lite"]
    assert "| layer | q_proj" in (out / "README.md").read_text()
    # new checkpoints run the encoder on the dynamic context chosen on speech-dev's calibration clips, and say so
    assert (lite.config.encoder_context_buckets, lite.config.encoder_context_margin) == ([15.0, 20.0], 1.0)
    assert lite.config.encoder_padding_stride == 4
    assert info["context"] == {"buckets": [15.0, 20.0], "margin": 1.0, "padding_stride": 4}
    assert "| dynamic encoder context | 15 / 20 s" in (out / "README.md").read_text()
    assert (out / "normalizer.json").exists()
    # The Hub expects `base_model` to be a model id: a bundled model's card names its OpenAI original, a local
    # folder's card names none; the unmeasured results section gives the command that measures and records WER.
    from huggingface_hub import ModelCard

    from liteasr_hf.calibration.card import INFO_FILE, render_model_card

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "openai/whisper-tiny.en" and "--model-card outputs/lite-whisper-tiny.en-size80`" in card.text
    info["base_model"] = str(tmp_path)
    (out / INFO_FILE).write_text(json.dumps(info))
    render_model_card(str(out))
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and f"`{tmp_path}` (a local folder)" in card.text
    # evaluate.py --model-card: the results row and a model-index the Hub's parser reads back.
    from liteasr_hf.evaluation.card import record_in_model_card

    summary = dict(substitutions=3, deletions=1, insertions=0, loops=0, clips=21, wer=0.05)
    record_in_model_card(str(out), {"summary": summary}, {"summary": dict(summary, wer=0.04)}, dataset="speech-dev", split="evaluation")
    card = ModelCard.load(out / "README.md")
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [("speech-dev", "wer", 5.0)]
    assert "| speech-dev | evaluation | 21 | 5.0 % | 4.0 % |" in card.text and "WER not measured" not in card.text
    # The checkpoint must still transcribe held-out speech (16 clips of ARCTIC + 8 kHz OSR once garbled JFK on base).
    from transformers import WhisperProcessor

    from liteasr_hf.audio import BUNDLED_CLIPS, decode

    processor = WhisperProcessor.from_pretrained(str(out))
    audio = decode(os.path.join(BUNDLED_CLIPS, "jfk_inaugural_1961.flac"), "jfk")
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    text = processor.batch_decode(lite.eval().generate(features, num_beams=1, max_new_tokens=40), skip_special_tokens=True)[0]
    assert "fellow americans" in text.lower() and "your country" in text.lower(), text


def tiny_dense_and_audio(tmp_path):
    """A tiny random Whisper folder and a folder of six 0.8 s clips: the whole recipe runs in seconds."""
    import soundfile as sf
    from modeling_utils import tiny_audio, tiny_processor, tiny_whisper

    model_dir, audio_dir = tmp_path / "dense", tmp_path / "audio"
    tiny_whisper().save_pretrained(model_dir)
    tiny_processor(tmp_path / "vocab").save_pretrained(model_dir)
    audio_dir.mkdir()
    for i in range(6):
        sf.write(audio_dir / f"clip{i}.wav", tiny_audio(seed=i), 16_000)
    return ["--model", str(model_dir), "--dataset", str(audio_dir), "--no-progress"]


RECIPES = {  # every path through calibrate.py that runs model code: allocation, factors, refinement, stages
    "the defaults": [],
    "sensitivity, refinement, two stages": ["--target-size", "0.8", "--stages", "0.9", "--refine-steps", "2"],
    "θ preset, refinement with decoder KL": ["--preset", "fast", "--refine-steps", "2", "--refine-kl", "1"],
}


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_every_step_runs_on_the_device(device, recipe, tmp_path, monkeypatch):
    """Each recipe on a tiny random Whisper, on each device. On CUDA, a CPU tensor meeting the GPU's eigenvalues once
    crashed the sensitivity allocation; scripts/gpu_check.sh found it at large-v3 size, which CPU tests cannot reach.
    While the lite model trains, no dense Whisper may hold the accelerator (large-v3 in fp32: 6.2 GB)."""
    import gc

    from transformers import WhisperForConditionalGeneration

    from liteasr_hf import LiteWhisperForConditionalGeneration
    from liteasr_hf.calibration import refine as refine_module

    real_refine, dense_devices = refine_module.refine, []

    def spy(lite, *args, **kwargs):
        dense = [m for m in gc.get_objects() if type(m) is WhisperForConditionalGeneration]
        dense_devices.extend(p.device.type for m in dense for p in m.parameters())
        return real_refine(lite, *args, **kwargs)

    monkeypatch.setattr(refine_module, "refine", spy)
    out = tmp_path / "lite"
    code = calibrate_main(tiny_dense_and_audio(tmp_path) + ["--device", device, "--output-dir", str(out)] + RECIPES[recipe])
    assert code == 0
    info = json.loads((out / "calibration.json").read_text())
    assert info["calibration"]["device"] == device and info["calibration"]["windows"] == 6
    if "--stages" in RECIPES[recipe]:
        assert info["size"]["fraction"] <= 0.8 and [st["refine"]["steps"] for st in info["selection"]["stages"]] == [2, 2]
    if "--refine-steps" in RECIPES[recipe]:
        assert dense_devices and set(dense_devices) == {"cpu"}, set(dense_devices)
    lite = LiteWhisperForConditionalGeneration.from_pretrained(str(out))
    assert lite.config.low_rank_config and sum(p.numel() for p in lite.get_encoder().parameters()) == info["size"]["lite"]


def test_two_processes_give_the_checkpoint_of_one(tmp_path):
    """Launched processes (`accelerate launch`, torchrun) each take a share of the clips and their statistics are
    summed; the main process alone then chooses ranks and refines. Two CPU processes (gloo) must write what one
    process writes. A data-parallel wrapper in refinement once crashed here, waiting on processes already done."""
    from safetensors.torch import load_file

    args = tiny_dense_and_audio(tmp_path) + ["--device", "cpu", "--target-size", "0.8", "--refine-steps", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert calibrate_main(args + ["--output-dir", str(one)]) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT,
                        *args, "--output-dir", str(two)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    infos = [json.loads((d / "calibration.json").read_text()) for d in (one, two)]
    assert infos[0]["ranks"] == infos[1]["ranks"] and infos[1]["calibration"]["windows"] == 6
    assert infos[0]["calibration"]["frames"] == infos[1]["calibration"]["frames"]
    a, b = (load_file(str(d / "model.safetensors")) for d in (one, two))
    assert a.keys() == b.keys()
    for k in a:  # the statistics were summed in another order: float64 rounding, then 3 Adam steps in float32
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_target_size_errors_and_offline_push(tiny_en, tiny_stats, tmp_path):
    """Reuse saved statistics (no audio pass: their windows are already counted) for a target size reached in two
    stages, each refined two steps; the push then fails offline with exit code 3 after the folder is complete."""
    _, _, path = tiny_en
    stats, split = tmp_path / "stats.safetensors", tmp_path / "split.json"
    tiny_stats.save(str(stats))
    split.write_text(json.dumps({"calibration": CAL_FILES}))
    out = tmp_path / "b"
    code = calibrate_main(["--model", path, "--split-file", str(split), "--resume-stats", str(stats), "--target-size", "0.75", "--stages", "0.9",
                        "--refine-steps", "2", "--refine-warmup", "1", "--output-dir", str(out), "--push-to-hub", "someone/lite-test", "--no-progress"])
    assert code == 3
    info = json.loads((out / "calibration.json").read_text())
    assert info["size"]["fraction"] <= 0.75 and info["calibration"]["windows"] == len(CAL_FILES)
    assert info["selection"]["mode"] == "target-size" and info["selection"]["refine"]["steps"] == 2
    assert [(st["size"], st["refine"]["steps"]) for st in info["selection"]["stages"]] == [(0.9, 2), (0.75, 2)]
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    for bad in (["--theta-attn", "1.0"], ["--theta-mlp", "0"], ["--target-size", "0"], ["--target-size", "1.5"], ["--padding-weight", "2"],
                ["--refine-steps", "-1"], ["--refine-warmup", "-1"], ["--stages", "0.7"], ["--stages", "1.0"],
                ["--stages", "0.7", "0.9", "--target-size", "0.5"], ["--stages", "0.9", "--preset", "fast"],
                ["--sequential", "dense"], ["--split-file", str(tmp_path / "nope.json")],
                ["--resume-stats", str(tmp_path / "nope.safetensors")], ["--preset", "fast", "--target-size", "0.7"],
                ["--context-buckets", "40"], ["--context-buckets", "15", "10"], ["--context-margin", "-1"],
                ["--refine-context"], ["--padding-weight", "some"]):
        with pytest.raises(SystemExit) as e:  # argparse's exit, before the model loads
            calibrate_main(["--model", str(tmp_path / "no-such-model"), *bad])
        assert e.value.code == 2
    with pytest.raises(ValueError, match="already a LiteASR"):
        calibrate_main(["--model", str(out), "--no-progress"])
    # Named before any audio is read, so no calibration is lost to them.
    split.write_text("{calibration: [")
    with pytest.raises(ValueError, match=f"{split} is not valid JSON"):
        calibrate_main(["--model", path, "--split-file", str(split), "--output-dir", str(tmp_path / "c"), "--no-progress"])
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot create the output folder"):
        calibrate_main(["--model", path, "--output-dir", str(tmp_path / "file" / "out"), "--no-progress"])




def test_killed_calibration_resumes_without_losing_a_window(tmp_path):
    """A calibration SIGKILLed mid-pass keeps every window it saved (saves are atomic: never a truncated file), and
    --resume-stats ends with the statistics of an uninterrupted run."""
    import signal
    import time

    import soundfile as sf
    from safetensors import safe_open

    from liteasr_hf.calibration.stats import CalibrationStats
    from modeling_utils import tiny_audio, tiny_processor, tiny_whisper

    model_dir, audio_dir = tmp_path / "dense", tmp_path / "audio"
    tiny_whisper().save_pretrained(model_dir)
    tiny_processor(tmp_path / "vocab").save_pretrained(model_dir)
    audio_dir.mkdir()
    n = 120
    for i in range(n):
        sf.write(audio_dir / f"clip{i:03d}.wav", tiny_audio(seed=i), 16_000)
    common = ["--model", str(model_dir), "--dataset", str(audio_dir), "--batch-size", "1", "--no-progress"]
    killed = tmp_path / "killed.safetensors"
    proc = subprocess.Popen([sys.executable, SCRIPT, *common, "--save-stats", str(killed), "--save-every", "1",
                             "--output-dir", str(tmp_path / "never")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = 0
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if killed.exists():
                try:
                    with safe_open(str(killed), framework="pt") as f:
                        seen = len(json.loads(f.metadata()["seen"]))
                except Exception:  # replaced while being read: try again
                    pass
                if seen >= 3:
                    break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = CalibrationStats.load(str(killed))  # loads: the last save completed
    assert 3 <= len(partial.seen) < n, len(partial.seen)  # killed mid-pass, after some windows
    resumed, full = tmp_path / "resumed", tmp_path / "full"
    assert calibrate_main([*common, "--resume-stats", str(killed), "--save-stats", str(killed), "--output-dir", str(resumed)]) == 0
    assert calibrate_main([*common, "--save-stats", str(tmp_path / "full.safetensors"), "--output-dir", str(full)]) == 0
    a, b = CalibrationStats.load(str(killed)), CalibrationStats.load(str(tmp_path / "full.safetensors"))
    assert sorted(a.seen) == sorted(b.seen) and len(a.seen) == n and set(partial.seen) <= set(a.seen)
    for name, s in b.linears.items():  # same windows, one at a time in both: only the float64 summation order differs
        for part in ("real", "pad"):
            assert a[name].count[part] == s.count[part]
            torch.testing.assert_close(a[name].gram[part], s.gram[part], rtol=1e-9, atol=1e-9)
    infos = [json.loads((d / "calibration.json").read_text()) for d in (resumed, full)]
    assert infos[0]["ranks"] == infos[1]["ranks"]


def test_hub_push_uploads_the_complete_folder(tmp_path, monkeypatch, capsys):
    """The push's success path against a local stand-in of the Hub API: the repo is created as asked, and what is
    uploaded is the finished checkpoint folder, whose model card names the repo in its loading code."""
    import shutil

    import huggingface_hub

    hub = tmp_path / "hub"
    calls = {}

    def create_repo(repo_id, private=False, token=None, exist_ok=False, repo_type=None):
        calls["create"] = dict(repo_id=repo_id, private=private, token=token, exist_ok=exist_ok, repo_type=repo_type)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(repo_id, folder_path, token=None, commit_message=None):
        calls["upload"] = dict(repo_id=repo_id, token=token, commit_message=commit_message)
        shutil.copytree(folder_path, hub / repo_id)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    out = tmp_path / "lite"
    code = calibrate_main(tiny_dense_and_audio(tmp_path) + ["--output-dir", str(out), "--push-to-hub", "someone/lite-test",
                                                            "--private", "--token", "hf_test"])
    assert code == 0 and "pushed to https://huggingface.co/someone/lite-test" in capsys.readouterr().out
    assert calls["create"] == dict(repo_id="someone/lite-test", private=True, token="hf_test", exist_ok=True, repo_type="model")
    assert calls["upload"]["repo_id"] == "someone/lite-test" and calls["upload"]["token"] == "hf_test"
    uploaded = hub / "someone" / "lite-test"
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(p.name for p in out.iterdir())
    for name in ("model.safetensors", "config.json", "calibration.json", "modeling_lite_whisper.py"):
        assert (uploaded / name).read_bytes() == (out / name).read_bytes()
    assert 'from_pretrained("someone/lite-test"' in (uploaded / "README.md").read_text()
