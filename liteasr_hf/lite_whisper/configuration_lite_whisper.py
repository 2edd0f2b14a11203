"""Lite-Whisper configuration: a Whisper config plus the rank of every low-rank encoder projection.

Ships inside checkpoints (trust_remote_code): import siblings with single-dot imports only.
Reads and writes the published LiteASR layout (efficient-speech/lite-whisper-*), whose only extra field is
`low_rank_config`. `encoder_context_buckets` / `encoder_context_margin` / `encoder_padding_stride` (dynamic encoder
context) are this package's;
a config without them (every published checkpoint) runs the full 30 s window.
"""

from transformers import WhisperConfig

from .context_lite_whisper import ENCODER_FRAME_SECONDS, check_context, check_padding_stride

# Encoder projections that may be low-rank, with their (in, out) sizes as functions of the config.
LOW_RANK_SHAPES = {
    "q_proj": lambda c: (c.d_model, c.d_model),
    "k_proj": lambda c: (c.d_model, c.d_model),
    "v_proj": lambda c: (c.d_model, c.d_model),
    "out_proj": lambda c: (c.d_model, c.d_model),
    "fc1": lambda c: (c.d_model, c.encoder_ffn_dim),
    "fc2": lambda c: (c.encoder_ffn_dim, c.d_model),
}

# Attention projections live in a layer's `self_attn`, the MLP's (fc1, fc2) in the layer itself.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def projection_path(name: str) -> str:
    """A projection's module path inside an encoder layer: "self_attn.q_proj", "fc1"."""
    return f"self_attn.{name}" if name in ATTENTION_PROJECTIONS else name


# The attention core's implementation choices, `attention_kernel` (attention_lite_whisper's docstring says what each
# runs). The one list: the attention file imports it.
ATTENTION_KERNELS = ("auto", "triton", "reference")


def check_kernel(kernel, where="attention_kernel"):
    """Return `kernel` if it is one of ATTENTION_KERNELS, else raise a ValueError naming `where`."""
    if not isinstance(kernel, str) or kernel not in ATTENTION_KERNELS:
        raise ValueError(f"{where} must be one of {', '.join(map(repr, ATTENTION_KERNELS))}, got {kernel!r}")
    return kernel


# How the installed package tells itself apart from a checkpoint's copy of this file (see __init__).
_RUNS_AS_PACKAGE = __name__.startswith("liteasr_hf.")


class LiteWhisperConfig(WhisperConfig):
    """`WhisperConfig` plus `low_rank_config`: one dict per encoder layer mapping any of
    q_proj, k_proj, v_proj, out_proj, fc1, fc2 to a rank. A name left out stays a dense `nn.Linear`.

    Dynamic encoder context: with `encoder_context_buckets` (seconds, ascending, e.g. [10, 15, 20]) the encoder runs on
    the smallest bucket that holds the audio plus `encoder_context_margin` seconds of the padding after it (the
    decoder needs some), or on the full window when none does. A batch takes the bucket of its longest clip. None (the
    default) always runs the full 30 s window, as Whisper does. `encoder_padding_stride` s > 1: past the audio plus the
    margin, the encoder runs on one frame in s of the padding, each standing for its s neighbours (attention weighs it
    by s; its output is repeated over them), so the decoder still sees every position of the context while the
    encoder pays for a fraction of the padding. 1 (the default) runs every frame.

    `attention_kernel` picks the rank-space attention core's implementation under attn_implementation="liteasr":
    "auto" (default: the Triton kernel on CUDA, PyTorch SDPA elsewhere, always on the CPU), "triton" (the kernel
    wherever it can run, an error where it cannot) or "reference" (always PyTorch). A run-time choice: a config.json
    without it (every published checkpoint) loads as "auto"; override with from_pretrained(path, attention_kernel=...)
    or model.config.attention_kernel = .... The LITEASR_ATTENTION environment variable, when set, replaces "auto"."""

    model_type = "lite-whisper"

    def __init__(self, low_rank_config: list[dict[str, int]] | None = None, encoder_context_buckets=None,
                 encoder_context_margin: float = 1.0, encoder_padding_stride: int = 1, attention_kernel: str = "auto",
                 **kwargs):
        # The checkpoint's custom ASR pipeline is for trust_remote_code users. With the package installed its own
        # pipeline is registered instead, and keeping the entry would make pipeline() demand trust_remote_code.
        if _RUNS_AS_PACKAGE:
            kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)
        if low_rank_config is None:
            low_rank_config = [{} for _ in range(self.encoder_layers)]
        self.low_rank_config = [{str(k): v for k, v in layer.items()} for layer in low_rank_config]
        self._check_low_rank_config()
        check_context(encoder_context_buckets, encoder_context_margin, self.max_source_positions * ENCODER_FRAME_SECONDS)
        self.encoder_context_buckets = None if encoder_context_buckets is None else [float(b) for b in encoder_context_buckets]
        self.encoder_context_margin = float(encoder_context_margin)
        self.encoder_padding_stride = encoder_padding_stride  # validated by __setattr__, as is the next
        self.attention_kernel = attention_kernel

    def __setattr__(self, key, value):
        # Also catches what __init__ does not see: from_pretrained(..., attention_kernel=...) sets config kwargs
        # with setattr after construction, as do model.config.attention_kernel = ... and the compressor.
        if key == "encoder_padding_stride":
            check_padding_stride(value, self.max_source_positions)
        if key == "attention_kernel":
            check_kernel(value)
        super().__setattr__(key, value)

    def _check_low_rank_config(self):
        layers = self.low_rank_config
        if len(layers) != self.encoder_layers:
            raise ValueError(
                f"low_rank_config has {len(layers)} entries but the encoder has {self.encoder_layers} layers"
            )
        for i, layer in enumerate(layers):
            for name, rank in layer.items():
                where = f"low_rank_config[{i}][{name!r}]"
                if name not in LOW_RANK_SHAPES:
                    raise ValueError(f"{where}: unknown projection, expected one of {sorted(LOW_RANK_SHAPES)}")
                d_in, d_out = LOW_RANK_SHAPES[name](self)
                if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(d_in, d_out):
                    raise ValueError(f"{where}: rank must be an int in [1, {min(d_in, d_out)}], got {rank!r}")
