"""`liteasr-hf transcribe` end to end on the real tiny.en (offline): outputs for files, folders, globs and stdin;
bad files are `error:` lines while the rest is written; resume after a finished or a killed run; two processes
write what one writes. Short clips only (3 s each): every run here loads the model once."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from liteasr_hf.audio import BUNDLED_CLIPS
from liteasr_hf.transcription.writers import FORMATS

pytestmark = pytest.mark.slow
ARCTIC = os.path.join(BUNDLED_CLIPS, "cmu_arctic_axb_a0004.flac")  # 2.8 s: "Lord, but I'm glad to see you again, Phil."
GOFORWARD = os.path.join(BUNDLED_CLIPS, "pocketsphinx_goforward.flac")  # 2.8 s: "go forward ten meters"


def transcribe_main(argv):
    from liteasr_hf.cli.transcribe import main

    return main(argv)


def mp3(src, dst):
    """`src` re-encoded as 44.1 kHz stereo mp3 at `dst`."""
    from audio_utils import encode

    encode(dst, sf.read(src, dtype="float32")[0], "libmp3lame", 44_100, 2)
    return str(dst)


def outputs(folder):
    """{file name: text} of the outputs in `folder`; JSON reduced to what does not depend on the run's timing."""
    found = {}
    for name in sorted(os.listdir(folder)):
        text = open(os.path.join(folder, name), encoding="utf-8").read()
        if name.endswith(".json"):
            d = json.loads(text)
            text = (d["text"], d["language"], [(s["start"], s["end"], s["text"]) for s in d["segments"]])
        found[name] = text
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    flac = shutil.copy(ARCTIC, folder / "arctic.flac")
    return str(flac), mp3(GOFORWARD, folder / "goforward.mp3")


@pytest.fixture(scope="module")
def one_run(tiny_en_path, inputs, tmp_path_factory):
    """A flac, an mp3 and stdin (the flac's bytes) in one run: (status, stderr, output folder)."""
    import io

    out = tmp_path_factory.mktemp("one")
    stdin, err = sys.stdin, sys.stderr
    sys.stdin, sys.stderr = io.TextIOWrapper(io.BytesIO(open(inputs[0], "rb").read())), io.StringIO()
    try:
        status = transcribe_main([*inputs, "-", "--model", tiny_en_path, "--output-dir", str(out)])
        log = sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stderr = stdin, err
    return status, log, out


def test_writes_every_format_for_a_flac_an_mp3_and_stdin(one_run):
    import srt
    import webvtt

    status, log, out = one_run
    assert status == 0, log
    assert sorted(os.listdir(out)) == sorted(f"{s}.{f}" for s in ("arctic", "goforward", "stdin") for f in FORMATS)
    texts = {s: (out / f"{s}.txt").read_text().lower() for s in ("arctic", "goforward", "stdin")}
    assert "glad to see you" in texts["arctic"] and "forward" in texts["goforward"], texts
    assert texts["stdin"] == texts["arctic"]
    for stem in ("arctic", "goforward"):
        result = json.loads((out / f"{stem}.json").read_text())
        assert result["text"].lower() + "\n" == texts[stem] and result["language"] in ("en", None)
        assert 2.7 < result["duration"] < 2.9 and result["segments"]
        cues = [(s["start"], s["end"], s["text"]) for s in result["segments"]]
        assert all(0 <= a <= b <= result["duration"] + 0.01 for a, b, _ in cues)
        subs = list(srt.parse((out / f"{stem}.srt").read_text()))
        assert [(round(s.start.total_seconds(), 3), round(s.end.total_seconds(), 3), s.content) for s in subs] == cues
        captions = webvtt.read(str(out / f"{stem}.vtt")).captions
        assert [c.text for c in captions] == [t for _, _, t in cues]
    assert "3 transcribed, 0 skipped (outputs exist), 0 failed" in log and "faster than real time" in log, log


def test_folders_globs_and_bad_files(tiny_en_path, inputs, tmp_path, capsys):
    """A folder (recursively, audio files only), a quoted glob, a missing and a corrupt file in one run: the bad ones
    are `error:` lines, the good ones are written, the status is 1. Two inputs named `clip` in different folders
    write deeper_clip.* and b_clip.* (their folders' names in front), and the run says so."""
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    shutil.copy(inputs[0], tmp_path / "a" / "deeper" / "clip.flac")
    (tmp_path / "a" / "notes.txt").write_text("not audio, and not taken")
    shutil.copy(inputs[1], tmp_path / "b" / "clip.mp3")
    (tmp_path / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(20_000))
    missing, out = str(tmp_path / "nowhere.wav"), tmp_path / "out"
    status = transcribe_main([str(tmp_path / "a"), str(tmp_path / "b" / "*.mp3"), missing, str(tmp_path / "corrupt.flac"),
                              str(tmp_path / "empty-folder-*"), "--model", tiny_en_path, "--output-dir", str(out),
                              "--output-format", "txt,json"])
    err = capsys.readouterr().err
    assert status == 1, err
    assert f"error: {missing}: no such file" in err
    assert f"error: {tmp_path / 'corrupt.flac'}: cannot decode audio" in err
    assert f"error: {tmp_path / 'empty-folder-*'}: no audio or video file matches this pattern" in err
    assert "note: 2 inputs are named 'clip'; their outputs are deeper_clip.*, b_clip.*" in err
    assert sorted(os.listdir(out)) == ["b_clip.json", "b_clip.txt", "deeper_clip.json", "deeper_clip.txt"]
    assert "2 transcribed, 0 skipped (outputs exist), 3 failed" in err


@pytest.fixture
def spy(monkeypatch):
    """Counts the models loaded and the recordings transcribed, both still done for real."""
    from liteasr_hf.transcription.engine import Transcriber

    calls = {"load": 0, "transcribe": []}
    init, transcribe = Transcriber.__init__, Transcriber.transcribe

    def counted_init(self, *args, **kwargs):
        calls["load"] += 1
        init(self, *args, **kwargs)

    def counted_transcribe(self, audio, **kwargs):
        calls["transcribe"].append(len(audio))
        return transcribe(self, audio, **kwargs)

    monkeypatch.setattr(Transcriber, "__init__", counted_init)
    monkeypatch.setattr(Transcriber, "transcribe", counted_transcribe)
    return calls


def test_resume_after_a_finished_and_a_killed_run(tiny_en_path, inputs, one_run, tmp_path, spy, capsys):
    out = tmp_path / "out"
    shutil.copytree(one_run[2], out)  # a finished run's outputs
    args = [*inputs, "--model", tiny_en_path, "--output-dir", str(out)]
    mtimes = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    assert transcribe_main(args) == 0
    assert spy == {"load": 0, "transcribe": []}  # nothing to do: not even the model is loaded
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)} == mtimes
    assert "0 transcribed, 2 skipped (outputs exist), 0 failed" in capsys.readouterr().err
    # Killed while writing goforward's outputs: three of four are there, and a temporary file the rename never took.
    os.remove(out / "goforward.json")
    (out / ".goforward.json.1234abcd.tmp").write_text('{"text": ')
    assert transcribe_main(args) == 0
    assert spy["load"] == 1 and len(spy["transcribe"]) == 1  # goforward only
    assert all(os.stat(out / f).st_mtime_ns == mtimes[f] for f in mtimes if f.startswith("arctic"))
    before, after = outputs(one_run[2]), outputs(out)
    assert all(after[f] == text for f, text in before.items() if f.startswith("goforward"))
    assert "1 transcribed, 1 skipped (outputs exist), 0 failed" in capsys.readouterr().err
    # --overwrite: done again
    assert transcribe_main([inputs[0], "--model", tiny_en_path, "--output-dir", str(out), "--overwrite", "--quiet"]) == 0
    assert len(spy["transcribe"]) == 2 and os.stat(out / "arctic.txt").st_mtime_ns > mtimes["arctic.txt"]
    assert capsys.readouterr().err == ""  # --quiet


def test_two_processes_write_what_one_writes(inputs, one_run, tiny_en_path, tmp_path):
    """Under a launcher (accelerate launch, torchrun) each process transcribes its share of the sorted inputs:
    two CPU processes write the files one process writes. Through `python -m liteasr_hf.cli.transcribe`."""
    out = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "liteasr_hf.cli.transcribe", *inputs, "--model", tiny_en_path, "--output-dir", str(out)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "process 1/2: 1 transcribed" in r.stderr and "process 2/2: 1 transcribed" in r.stderr, r.stderr[-3000:]
    one = {k: v for k, v in outputs(one_run[2]).items() if not k.startswith("stdin")}
    assert outputs(out) == one


def test_bad_options_are_one_line_and_status_2(tiny_en_path, inputs, tmp_path, capsys):
    from liteasr_hf.cli import run

    for args, message in ((["--batch-size", "0"], "error: --batch-size must be at least 1"),
                          (["--mode", "sequential", "--word-timestamps"], "error: --word-timestamps needs --mode vad"),
                          (["--model", str(tmp_path / "no-model")], f"error: no model folder {tmp_path / 'no-model'}"),
                          (["-", "-"], "error: - (stdin) can be given only once")):
        with pytest.raises(SystemExit) as e:
            run("transcribe", [inputs[0], "--output-dir", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(message) and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:
        run("transcribe", [inputs[0], "--output-format", "txt,docx"])
    assert e.value.code == 2 and "choose from txt, srt, vtt, json" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_help_explains_inputs_outputs_resume_and_modes():
    from liteasr_hf.cli import COMMANDS
    from liteasr_hf.cli.transcribe import build_parser

    assert "transcribe" in COMMANDS
    text = " ".join(build_parser().format_help().split())
    for phrase in ("a folder (every audio or video file inside it, recursively)", "glob pattern", "- for stdin",
                   "<output-dir>/<name>.txt, .srt, .vtt and .json", "A run resumes", "--overwrite",
                   "exit status is 1", "accelerate launch", "vad: the speech pieces", "sequential: Whisper's long",
                   "(default: all)", "(default 16)", "(default cpu", "(default vad)"):
        assert phrase in text, phrase
