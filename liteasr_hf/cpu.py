"""The fastest CPU setting for transcription, measured on a 2-core Xeon with AMX and on AMD EPYCs with and without
AVX512-BF16: see docs/benchmarks.md.

The encoder is matrix-matrix work, where bf16 on AMX is about 2.4x fp32. A decoder step at batch 1 is a chain of
matrix-vector products whose cost is reading the weights from memory (base: 194 MB of fp32 a token, more than half of
it the output projection): there oneDNN's bf16 is no faster than fp32, and int8 weights read a quarter of the bytes.
At batch 8 the decoder's products have 8 rows and bf16 is fastest. Around the products, a batch-1 step is
small ops and the Python that calls them; the lean decoder layer does the same work with fewer of both (base, int8:
322 top-level aten calls a step instead of 448, a decoder step 24 % shorter, 7 % end to end). Hence `optimize_for_cpu`:
bf16 where the CPU has it, the decoder's precision a choice, int8 logits whose greedy choice is exact, lean layers,
and freed memory kept for reuse (`keep_freed_memory`).
"""

from __future__ import annotations

import ctypes
import logging
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer

from .generation import suppression_mask

logger = logging.getLogger(__name__)


def cpu_bf16_support() -> str:
    """'native' where this CPU has AMX or AVX512-BF16 (bf16 matmuls in hardware), 'emulated' where it has neither
    (bf16 then runs slower than fp32), 'unknown' where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    return "native" if flags & {"amx_bf16", "avx512_bf16"} else "emulated"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks under 32 MiB for reuse instead of handing them back to the OS. By
    default a freed activation of a few MB goes back (mmap'd blocks at once, the heap's top past the trim threshold)
    and the next one faults in fresh zeroed pages. In a batch-1 transcription on a 2-core AMD EPYC, the lite encoder's
    GELU over [500, 2048] bf16 took 2.97 ms a call, 0.81 ms with the memory kept; end to end 1.07x for the lite model,
    1.02x for dense fp32. Process-wide; the process's resident memory then stays near its peak. Returns whether it
    applied (False off glibc)."""
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS, Windows: their allocators have no mallopt knobs
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' CDLL takes no None
        return False


def _cast_input(dtype):
    def hook(module, args, kwargs):
        if "input_features" in kwargs:
            kwargs["input_features"] = kwargs["input_features"].to(dtype)
        elif args:
            args = (args[0].to(dtype),) + tuple(args[1:])
        return args, kwargs
    return hook


def _cast_output(dtype):
    def hook(module, args, kwargs, out):
        out.last_hidden_state = out.last_hidden_state.to(dtype)
        return out
    return hook


def _int8_per_channel(weight):
    """(int8 weight, float32 scale per output row): symmetric, scale = max |w| / 127 of the row."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """`nn.Linear` for matrix-vector work on the CPU: int8 weights with one scale per output row, activations in
    bf16 through torch's `_weight_int8pack_mm` (the weight-only int8 kernel of gpt-fast's CPU path), output and bias in
    the input's dtype. Weight-only: activations are not quantized, so the error is the weights' rounding (measured
    0.7 % relative on a 512-wide product) and bf16's 0.4 %. On this project's 2-core Xeon, one row: 512 x 512 in 35 us
    against 57 us fp32, 51,865 x 512 in 1.8 ms against 4.9 ms (weights streamed from memory). From 8 rows on, bf16
    matmuls are faster, so this is for batch 1."""

    inference_only = True

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            raise RuntimeError(f"the int8 decoder needs torch.ops.aten._weight_int8pack_mm, which torch {torch.__version__} lacks")
        weight, scale = _int8_per_channel(linear.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def product(self, rows):
        """rows [n, in] times the int8 weight: [n, out], bf16."""
        return torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight, self.scale)

    def forward(self, x):
        y = self.product(x.reshape(-1, self.in_features))
        # At batch 1 a decoder step is ~1,200 small ops, so each one counts: the bias add also casts back (float32 + bf16
        # -> float32).
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias, y)
        return y.view(*x.shape[:-1], self.out_features)


def dynamic_int8_pack(weight_int8, scale):
    """fbgemm's packed form of an int8 weight with per-row `scale`, for `torch.ops.quantized.linear_dynamic`, or None
    where this torch cannot (no quantized ops, or no quantized engine that packs per-row scales). The packing needs a
    quantized tensor, which torch deprecates; the weight-only kernel stays where it is gone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation of quantized tensor creation, once at load
            q = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(q, None)
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


class Int8Logits(Int8Linear):
    """The output projection in int8, with each row's `exact_top_k` largest logits recomputed from the unquantized
    weight (Whisper ties it to the token embedding, which stays). Greedy decoding and the logits processors that
    read the top (suppression, timestamps' max text token) then see full-precision values wherever the choice is made;
    the rest of the row keeps int8's error. int8 rounding moves a logit by a few hundredths, so the token fp32 would
    pick is inside int8's top 16 unless 16 tokens tie within that.

    The approximate logits come from fbgemm's dynamic int8 product (`quantized::linear_dynamic`: the activations
    quantized too, per call, to 7 bits) where this torch has it, else from the weight-only kernel. It is the largest
    product of a decoder step, and on a 2-core AVX2-only EPYC 1 x 512 -> 51,865 took 1.3 ms against 4.7 ms weight-only
    (8 rows: 2.1 against 10.5 ms; docs/benchmarks.md, run 11); its larger error (1.5 % relative against 0.8 %) is in
    the logits that are not recomputed."""

    def __init__(self, linear: nn.Linear, exact_top_k: int = 16, dynamic: bool = True):
        super().__init__(linear)
        self.full_weight, self.exact_top_k = linear.weight, exact_top_k  # shared with embed_tokens: no copy
        # the same int8 values and scales as the weight-only kernel's, so the two differ only in the activations
        self.packed = dynamic_int8_pack(self.weight, self.scale.float()) if dynamic else None
        if self.packed is not None:
            del self.weight  # the packed copy replaces it

    def product(self, rows):
        if self.packed is None:
            return super().product(rows)
        # reduce_range: 7-bit activations, so that AVX2's u8 x s8 pairwise products cannot saturate int16
        return torch.ops.quantized.linear_dynamic(rows.float(), self.packed, True)

    def exact_linear(self) -> nn.Linear:
        """The unquantized projection this one was made from (its weight is still the tied embedding)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.full_weight
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def approximate(self, x):
        """The int8 logits of `x` [..., in], before the top is recomputed."""
        return super().forward(x)

    def forward(self, x):
        logits = self.approximate(x)
        flat, rows = logits.view(-1, self.out_features), x.reshape(-1, self.in_features)
        top = flat.topk(min(self.exact_top_k, self.out_features), dim=-1).indices
        exact = torch.einsum("nd,nkd->nk", rows.to(self.full_weight.dtype), self.full_weight[top])
        if self.bias is not None:
            exact = exact + self.bias[top]
        flat.scatter_(1, top, exact.to(flat.dtype))
        return logits


class PackedLinear(nn.Module):
    """`nn.Linear` in bf16 with its weight laid out once in oneDNN's blocked format (`mkldnn._reorder_linear_weight`,
    the layout torch's CPU compiler uses): `F.linear` lays a bf16 weight out again on every call, which for the few
    rows of a decoding step costs more than the product. The same numbers (checked bit for bit at 1-16 rows); about
    half the time of a decoder product at 1-16 rows on an AMX Xeon (512 x 2048: 100 against 46 us)."""

    inference_only = True

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, not copied
        self._pack()

    def _pack(self):
        # Not a buffer: oneDNN's opaque tensor takes no .to(); packed again from the weight after any conversion.
        bf16 = self.weight.dtype == torch.bfloat16 and self.weight.device.type == "cpu"
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1) if bf16 else None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._pack()
        return self

    def __getstate__(self):  # copies and pickles carry the weight; the packed form is made again from it
        return {k: v for k, v in super().__getstate__().items() if k != "packed"}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._pack()

    def forward(self, x):
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


class SuppressedLogits(nn.Module):
    """The output projection with tokens at -inf in every row: the work of transformers'
    `SuppressTokensLogitsProcessor`, which builds its vocabulary mask again at every decoding step (torch.isin over
    51,865 tokens: 3.2 ms a step on one core of an AMX Xeon, about a quarter of a batch-1 step)."""

    inference_only = True

    def __init__(self, projection: nn.Module, tokens, left_to_processor=()):
        super().__init__()
        self.projection, self.tokens = projection, tuple(int(t) for t in tokens)  # all, as the generation config had them
        mask = suppression_mask([t for t in self.tokens if t not in left_to_processor], projection.out_features)
        self.register_buffer("mask", mask, persistent=False)

    @property
    def out_features(self):
        return self.projection.out_features

    def forward(self, x):
        logits = self.projection(x)
        return logits + self.mask.to(logits.dtype)


def suppress_tokens_in_logits_(model):
    """In place: the generation config's `suppress_tokens` applied by the output projection (`SuppressedLogits`)
    instead of a logits processor rebuilt at every step. One token stays with the processor: the no-speech token
    (<|nocaptions|>, the one before <|notimestamps|>), whose probability Whisper's long-form decoding reads from the
    first step's logits before any suppression; the processor's cost is in comparing the vocabulary with many tokens,
    and with one it is small. (The no-speech probability is then taken over the unsuppressed tokens only: the
    suppressed ones are punctuation and special tokens, of little weight at the first step.) Undone by
    `unsuppress_logits_`."""
    config = model.generation_config
    tokens = list(config.suppress_tokens or ())
    if tokens and not isinstance(model.proj_out, SuppressedLogits):
        no_speech = config.no_timestamps_token_id - 1 if getattr(config, "no_timestamps_token_id", None) else None
        if getattr(config, "prev_sot_token_id", None) is None and len(tokens) >= 2:
            # Whisper's long-form generate takes <|startofprev|> from here where the config does not name it
            config.prev_sot_token_id = tokens[-2]
        left = [no_speech] if no_speech in tokens else []
        model.proj_out = SuppressedLogits(model.proj_out, tokens, left)
        config.suppress_tokens = left or None
    return model


def unsuppress_logits_(model):
    """In place: the plain output projection back, and its tokens back in the generation config."""
    if isinstance(model.proj_out, SuppressedLogits):
        model.generation_config.suppress_tokens = list(model.proj_out.tokens)
        model.proj_out = model.proj_out.projection
    return model


def can_pack_linears() -> bool:
    """Whether this torch packs bf16 linear weights for oneDNN (`PackedLinear`)."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")):
        return False
    try:
        w = torch.ones(4, 8, dtype=torch.bfloat16)
        y = ops._linear_pointwise(torch.ones(2, 8, dtype=torch.bfloat16), ops._reorder_linear_weight(w, 1), None,
                                  "none", [], "")
        return bool((y == 8).all())
    except (RuntimeError, NotImplementedError):
        return False


def pack_decoder_linears_(model):
    """In place: the bf16 products of each lean decoder layer's step (fused q/k/v, the attention outputs, the
    cross-attention query, the MLP) as `PackedLinear`s. The cross-attention keys / values stay: they run once per
    clip on every encoder frame, where `F.linear` is as fast."""
    for layer in model.model.decoder.layers:
        owners = [(layer, "qkv_proj"), (layer.self_attn, "out_proj"), (layer.encoder_attn, "q_proj"),
                  (layer.encoder_attn, "out_proj"), (layer, "fc1"), (layer, "fc2")]
        for owner, name in owners:
            child = getattr(owner, name, None)
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16:
                setattr(owner, name, PackedLinear(child))
    return model


def int8_decoder_(model):
    """In place: the decoder's linears and the output projection as `Int8Linear` / `Int8Logits`. The cross-attention
    key/value projections stay: they run once per clip on every encoder frame (matrix-matrix work; in bf16 they
    measured no faster end to end)."""
    for parent_name, parent in list(model.model.decoder.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and not (parent_name.endswith("encoder_attn") and name in ("k_proj", "v_proj")):
                setattr(parent, name, Int8Linear(child))
    model.proj_out = Int8Logits(model.proj_out)
    return model


def _fuse_linears(linears):
    """One module of the same kind (`nn.Linear` or `Int8Linear`) computing `linears` side by side, with a zero bias
    where one has none. Each linear's tensors become views of its rows in the fused one, so nothing is copied and code
    that calls the linears still works. int8 scales are per row, so fusing changes no quantized value."""
    first = linears[0]
    fused = nn.Module.__new__(type(first))
    nn.Module.__init__(fused)
    fused.in_features, fused.out_features = first.in_features, sum(lin.out_features for lin in linears)
    for name in ("weight", "scale", "bias"):
        if not hasattr(first, name):
            continue
        like = next((getattr(lin, name) for lin in linears if getattr(lin, name) is not None), None)
        if like is None:
            setattr(fused, name, None)
            continue
        tensor = torch.cat([t.detach() if (t := getattr(lin, name)) is not None else like.new_zeros(lin.out_features)
                            for lin in linears])
        if isinstance(like, nn.Parameter):
            fused.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
        else:
            fused.register_buffer(name, tensor)
        start = 0
        for lin in linears:
            rows, start = slice(start, start + lin.out_features), start + lin.out_features
            if getattr(lin, name) is not None:
                view = tensor[rows]
                setattr(lin, name, nn.Parameter(view, requires_grad=False) if isinstance(like, nn.Parameter) else view)
    return fused


def _norm(layer_norm: nn.LayerNorm, x):
    return F.layer_norm(x, layer_norm.normalized_shape, layer_norm.weight, layer_norm.bias, layer_norm.eps)


def equal_row_groups(states):
    """(index of each run's first row [N], rows in each run [N]) of the runs of equal consecutive rows of `states`
    [B, T, d] (equal in every batch row), or None when no two neighbours are equal. Where the encoder strided its
    padding (`ContextPlan.groups`) it repeats one row over each group; attention over `count` equal keys and values
    is attention over one with log(count) added to its score, whatever made them equal, so grouping by equality is
    exact and needs nothing from the encoder but its output."""
    same = (states[:, 1:] == states[:, :-1]).all(-1).all(0)  # [T - 1]: row t + 1 equals row t
    if not bool(same.any()):
        return None
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=states.device), ~same]).nonzero().squeeze(1)  # row 0 starts one
    counts = torch.diff(starts, append=torch.tensor([states.shape[1]], device=states.device))
    return starts, counts


class RowGroups:
    """(`equal_row_groups`, the encoder rows that start a group) of the last encoder output asked about, shared by a
    decoder's layers: each layer fills its cross-attention cache from the same output, and the comparison reads all of
    it (8 rows of 20 s: 11 ms a layer)."""

    def __init__(self):
        self._states, self._result = None, None

    def __call__(self, states):
        if self._states is None or self._states() is not states:
            groups = equal_row_groups(states)
            self._states, self._result = weakref.ref(states), (groups, states if groups is None else states[:, groups[0]])
        return self._result


class LeanDecoderLayer(WhisperDecoderLayer):
    """Transformers' `WhisperDecoderLayer` for generation, swapped in for it (`lean_decoder_`) over the same
    submodules: the same computation and cache updates with less around them (at batch 1 a step's cost is as much
    dispatch as arithmetic): q/k/v in one product (`qkv_proj`; the three projections become views of it), SDPA
    called directly, no attention-interface lookup or keyword-deprecation wrappers; the cross-attention keys and
    values kept in float32 on one row per run of equal encoder rows (`equal_row_groups`). Anything else (attention
    weights for word timestamps, a cross-attention mask, training, a cache of another kind) runs transformers' own
    forward. Inference only: a model carrying it refuses `save_pretrained`."""

    inference_only = True

    def __init__(self, layer: WhisperDecoderLayer, row_groups: RowGroups | None = None):
        nn.Module.__init__(self)
        self.__dict__.update({k: v for k, v in vars(layer).items() if not k.startswith("_")})
        for name, child in layer.named_children():
            self.add_module(name, child)
        attn = layer.self_attn
        self.qkv_proj = _fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        # The cross-attention cache this layer filled grouped (float32, one row per group) and its key bias:
        # (cache layer, log-count bias or None). Kept here, not on transformers' cache object.
        self._grouped = None
        self._row_groups = row_groups or RowGroups()

    def _grouped_bias(self, cache_layer):
        """The key bias of `cache_layer` when this layer filled it grouped, else False."""
        if self._grouped is None or self._grouped[0]() is not cache_layer:
            return False
        return self._grouped[1]

    def _ungroup(self, cache, dtype):
        """The cross-attention cache layer this layer filled, as transformers' own layer reads it: rows repeated back
        over their groups, in the decoder's `dtype`."""
        layers = getattr(getattr(cache, "cross_attention_cache", None), "layers", None)
        idx = self.self_attn.layer_idx
        if not layers or idx >= len(layers) or self._grouped_bias(layers[idx]) is False:
            return
        layer, counts = layers[idx], self._grouped[2]
        if counts is not None:
            frames = int(counts.sum())
            layer.keys = layer.keys.repeat_interleave(counts, dim=2, output_size=frames)
            layer.values = layer.values.repeat_interleave(counts, dim=2, output_size=frames)
        layer.keys, layer.values = layer.keys.to(dtype), layer.values.to(dtype)
        self._grouped = None

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cache=None, past_key_values=None, use_cache=True, **kwargs):
        cache = cache if cache is not None else past_key_values
        if (self.training or encoder_hidden_states is None or encoder_attention_mask is not None or not use_cache
                or not isinstance(cache, EncoderDecoderCache) or kwargs.get("output_attentions")
                or self.self_attn.config.output_attentions):
            self._ungroup(cache, hidden_states.dtype)  # as transformers' layer reads it
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   cache, use_cache=use_cache, **kwargs)
        batch, length, width = hidden_states.shape
        self_attn, cross_attn, idx = self.self_attn, self.encoder_attn, self.self_attn.layer_idx
        heads = (batch, -1, self_attn.num_heads, self_attn.head_dim)

        x = _norm(self.self_attn_layer_norm, hidden_states)
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self_attn.num_heads, self_attn.head_dim).permute(2, 0, 3, 1, 4)
        k, v = cache.self_attention_cache.update(k, v, idx)
        # as transformers' SDPA path: causal by flag on an empty cache's prefill, else the decoder's mask (None at one
        # token); Whisper scales q by 1/8 before the product, a power of two, so scale= gives the same numbers
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self_attn.scaling,
                                           is_causal=length > 1 and attention_mask is None)
        hidden_states = hidden_states + self_attn.out_proj(a.transpose(1, 2).reshape(batch, length, width))

        x = _norm(self.encoder_attn_layer_norm, hidden_states)
        q = cross_attn.q_proj(x).view(heads).transpose(1, 2)
        if not cache.is_updated.get(idx):
            groups, states = self._row_groups(encoder_hidden_states)
            # contiguous per head: one query row reads each head's keys and values as one block (8 rows of 19 s,
            # bf16, one thread: 0.70 against 1.09 ms a call as strided views of the projection)
            k = cross_attn.k_proj(states).view(heads).transpose(1, 2)
            v = cross_attn.v_proj(states).view(heads).transpose(1, 2)
            # At batch 1 kept in float32: torch's CPU attention for one query row was slow in bf16 (290 keys: 107 us
            # against 17 us in float32 on an AVX512-BF16 EPYC, six calls a step), and float32 is the more exact. At
            # larger batches a step reads every row's keys and values (8 pieces of 18 s: 30 MB a layer in float32),
            # and bf16 halves that (925 keys, 8 rows, one thread of an AMX Xeon: 0.72 against 1.38 ms a call).
            kv_dtype = torch.float32 if batch == 1 else hidden_states.dtype
            dense = torch.contiguous_format
            cache.cross_attention_cache.update(k.to(kv_dtype, memory_format=dense), v.to(kv_dtype, memory_format=dense), idx)
            cache.is_updated[idx] = True
            bias = None if groups is None else groups[1].to(kv_dtype).log().view(1, 1, 1, -1)
            self._grouped = (weakref.ref(cache.cross_attention_cache.layers[idx]), bias,
                             None if groups is None else groups[1])
        layer = cache.cross_attention_cache.layers[idx]
        bias = self._grouped_bias(layer)
        keys, values = layer.keys, layer.values
        if bias is False:  # filled by transformers' layer: every frame
            bias = None
        a = F.scaled_dot_product_attention(q.to(keys.dtype), keys, values, attn_mask=bias, scale=cross_attn.scaling)
        a = a.to(q.dtype)
        hidden_states = hidden_states + cross_attn.out_proj(a.transpose(1, 2).reshape(batch, length, width))

        x = _norm(self.final_layer_norm, hidden_states)
        return hidden_states + self.fc2(self.activation_fn(self.fc1(x)))


def lean_decoder_(model):
    """In place: each decoder layer replaced by a `LeanDecoderLayer` over the same submodules. The outputs are those
    of transformers' layer up to float rounding (the fused q/k/v product sums in another order)."""
    layers, row_groups = model.model.decoder.layers, RowGroups()
    for i, layer in enumerate(layers):
        if not isinstance(layer, LeanDecoderLayer):
            layers[i] = LeanDecoderLayer(layer, row_groups)
    return model


def optimize_for_cpu(model, dtype="auto", decoder: str | None = None, logits: str | None = None, keep_memory: bool = True):
    """In place, for inference on a CPU. `dtype` "auto": bfloat16 where the CPU runs it natively (AMX / AVX512-BF16),
    else float32 with a warning (emulated bf16 is slower than fp32) and, unless `decoder` says otherwise, the int8
    decoder (there the fastest at batch 1 and 8); or a torch dtype. `decoder` overrides the
    decoder's layers: "fp32" (the decoder's numerics unchanged), "bf16" (where bf16 is native: WER as fp32 on
    speech-dev), or "int8" (int8 weights, `Int8Linear`: the fastest at batch 1, at a cost in WER of about half a
    point on speech-dev; docs/benchmarks.md, runs 17-18). `logits`, the output projection: "int8" (`Int8Logits`: int8
    logits with the top 16 of each row recomputed exactly, so that greedy decoding picks the tokens the exact
    logits pick; 51,865 x 512 in 0.46 ms against 1.8 ms in bf16 on an AVX512-BF16 EPYC) or "exact" (the decoder's
    dtype); default "int8" unless the decoder runs fp32. The encoder's input and output are cast at its boundary, so
    float32 features go in as from the feature extractor. The decoder layers run `lean_decoder_`'s forward (same
    outputs, less overhead a token), and the output projection suppresses the generation config's `suppress_tokens`
    itself (`SuppressedLogits`). `keep_memory`: also call `keep_freed_memory()` (process-wide). Returns the
    model. Any Whisper-family model; not for training, for saving, or for CUDA."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("optimize_for_cpu is for a model on the CPU")
    if decoder not in (None, "fp32", "bf16", "int8"):
        raise ValueError(f"decoder must be 'fp32', 'bf16' or 'int8', got {decoder!r}")
    if logits not in (None, "int8", "exact"):
        raise ValueError(f"logits must be 'int8' or 'exact', got {logits!r}")
    int8_kernel = hasattr(torch.ops.aten, "_weight_int8pack_mm")
    if dtype == "auto":
        support = cpu_bf16_support()
        dtype = torch.bfloat16 if support == "native" else torch.float32
        if support != "native":
            # Without bf16 hardware the decoder's products are weight-read bound and int8 reads a quarter of fp32's
            # bytes: on a 2-core AVX2-only EPYC the output projection took 4.6 ms a row in int8 against 19.1 ms in
            # fp32, and every decoder product was faster in int8 at 1 and 8 rows (docs/benchmarks.md, run 10).
            if decoder is None and int8_kernel:
                decoder = "int8"
            logger.warning("this CPU has no native bf16 (AMX / AVX512-BF16: %s): the encoder stays float32%s", support,
                           ", the decoder runs in int8" if decoder == "int8" else "")
    if keep_memory:
        keep_freed_memory()
    decoder_dtype = {None: dtype, "fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}[decoder]
    if logits is None:
        logits = "int8" if int8_kernel and (decoder == "int8" or decoder_dtype != torch.float32) else "exact"
    model.to(decoder_dtype)
    encoder = model.get_encoder()
    encoder.to(dtype)
    encoder.register_forward_pre_hook(_cast_input(dtype), with_kwargs=True)  # features come in float32
    if dtype != decoder_dtype:
        encoder.register_forward_hook(_cast_output(decoder_dtype), with_kwargs=True)
    unsuppress_logits_(model)  # a model optimized before: its projection as loaded, to be chosen again
    if decoder == "int8":
        int8_decoder_(model)
    if logits == "int8" and not isinstance(model.proj_out, Int8Logits):
        model.proj_out = Int8Logits(model.proj_out)
    elif logits == "exact" and isinstance(model.proj_out, Int8Logits):
        model.proj_out = model.proj_out.exact_linear()
    lean_decoder_(model)
    if decoder_dtype == torch.bfloat16 and can_pack_linears():
        pack_decoder_linears_(model)
    suppress_tokens_in_logits_(model)
    return model.eval()
