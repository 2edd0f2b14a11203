"""Factor refinement: after PCA, fit the low-rank encoder to the dense one by gradient descent.

PCA fits every linear to its own output variance; nothing in it sees the error the stack
accumulates or what the decoder reads. Refinement starts from the PCA factors and, for a bounded
number of steps, optimises `weight1`, `weight2`, `bias` of the low-rank linears to match the dense
encoder on unlabeled calibration audio:

- encoder-output MSE (cheap: no decoder), every frame weighted so that real audio and padding each
  hold `1 - pad_weight` / `pad_weight` of a clip's loss; the decoder cross-attends to the padding,
  so an encoder that only matches the speech frames makes it loop;
- optionally (`kl_weight > 0`) the KL divergence from the dense model's next-token distribution on
  its own greedy transcripts (teacher forcing; the dense model is the teacher, no labels needed).

A held-back part of the calibration clips decides when to stop (early stopping with patience) and
which parameters are kept (the best held-out loss). Deterministic for a seed on a given device.
Runs where the model is (CPU is fine for tiny/base; cost per step: docs/results.md). Under
`accelerate launch`, calibrate.py shards the statistics pass over the processes and refines on the
main process alone: wrapping the model for data parallelism there would wait on processes that have
finished.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..generation import MAX_NEW_TOKENS, quiet_length_warning
from ..lite_whisper.context_lite_whisper import ContextSettings
from .features import DEFAULT_PADDING_WEIGHT, frame_weights


def _encoder(model: nn.Module) -> nn.Module:
    return model.get_encoder() if hasattr(model, "get_encoder") else model


def _enc_out(encoder: nn.Module, x: torch.Tensor, context=None) -> torch.Tensor:
    """The encoder's last hidden state for `x`; on `context` (a lite encoder's `ContextSettings` or `ContextPlan`)
    where given."""
    out = encoder(input_features=x) if context is None else encoder(input_features=x, encoder_context=context)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@torch.no_grad()
def teacher_outputs(dense_model: nn.Module, features: torch.Tensor, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """The dense encoder's outputs [N, T, D] on the calibration features (computed once, CPU)."""
    from tqdm.auto import tqdm

    enc = _encoder(dense_model).eval()
    p = next(enc.parameters())
    batches = tqdm(features.split(batch_size), desc="teacher encoder outputs", unit="batch", disable=not progress)
    return torch.cat([_enc_out(enc, f.to(p.device, p.dtype)).float().cpu() for f in batches])


@torch.no_grad()
def teacher_tokens(dense_model: nn.Module, features: torch.Tensor, batch_size: int = 8, progress: bool = False,
                   **generate_kwargs):
    """Teacher forcing targets for the KL loss: for each clip, the dense model's greedy token ids
    (prompt included) and its log-probabilities over them [len - 1, vocab] (float16, CPU)."""
    from tqdm.auto import tqdm

    p = next(dense_model.parameters())
    # The token cap of evaluation; the prompt (<= 4 tokens) must fit the decoder's positions too. No language is
    # forced: the teacher transcribes calibration audio in whatever language it hears.
    generate_kwargs = {"max_new_tokens": min(MAX_NEW_TOKENS, dense_model.config.max_target_positions - 4), **generate_kwargs}
    out = []
    # the dense model transcribes every calibration window at the full 30 s: minutes on a CPU
    for f in tqdm(features.split(batch_size), desc="teacher transcripts", unit="batch", disable=not progress):
        f = f.to(p.device, p.dtype)
        with quiet_length_warning():
            seqs = dense_model.generate(f, **generate_kwargs)
        seqs = seqs.sequences if hasattr(seqs, "sequences") else seqs
        enc = _enc_out(_encoder(dense_model), f)
        eos = dense_model.generation_config.eos_token_id
        for s, e in zip(seqs, enc):
            ends = (s == eos).nonzero()
            s = s[: int(ends[0]) + 1] if len(ends) else s  # through the first eos (the rest is padding)
            logits = dense_model.proj_out(dense_model.get_decoder()(input_ids=s[None, :-1], encoder_hidden_states=e[None]).last_hidden_state)
            out.append((s.cpu(), logits[0].float().log_softmax(-1).half().cpu()))
    return out


def _kl(model, enc_out, targets):
    """Mean over tokens of KL(teacher || student) for each clip in the batch (decoder frozen)."""
    total = 0.0
    for e, (ids, t_logp) in zip(enc_out, targets):
        ids, t_logp = ids.to(e.device), t_logp.to(e.device).float()
        h = model.get_decoder()(input_ids=ids[None, :-1], encoder_hidden_states=e[None]).last_hidden_state
        s_logp = model.proj_out(h)[0].float().log_softmax(-1)
        total = total + (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    return total / len(targets)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters refinement may change: weight1 / weight2 / bias of every low-rank linear. (Training the layer
    norms or every encoder weight as well did no better: docs/results.md.)"""
    enc = _encoder(model)
    names = set()
    for mname, m in enc.named_modules():
        if hasattr(m, "weight1") and hasattr(m, "weight2"):
            names |= {f"{mname}.{p}" for p, _ in m.named_parameters(recurse=False)}
    params = [p for n, p in enc.named_parameters() if n in names]
    if not params:
        raise ValueError("no low-rank linears found in the model's encoder: refine a compressed model")
    return params


def refine(
    model: nn.Module,
    features: torch.Tensor,
    real: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    token_targets: Sequence | None = None,
    kl_weight: float = 0.0,
    steps: int = 300,
    lr: float = 1e-4,
    warmup: int = 0,
    batch_size: int = 4,
    holdout: float = 0.2,
    eval_every: int = 25,
    patience: int = 3,
    pad_weight: float | None = DEFAULT_PADDING_WEIGHT,
    seed: int = 0,
    progress: bool = True,
    context: ContextSettings | None = None,
    mse_weight: float = 1.0,
) -> dict:
    """Refine `model` (a compressed Whisper: lite model or one with low-rank linears) in place.

    features: [N, n_mels, 3000] calibration log-mels; real: [N] real-audio encoder frames; targets:
    `teacher_outputs(dense_model, features)` when mse_weight > 0 (else None); token_targets: `teacher_tokens(...)` when kl_weight > 0.
    The last `holdout` share of the clips (after a seeded shuffle) is never trained on: it is scored
    every `eval_every` steps, training stops after `patience` scores without improvement, and the
    best-scoring parameters are restored. `warmup`: the learning rate rises linearly to `lr` over this
    many steps (Adam's first steps, before its variance estimates settle, can throw the factors far off
    the PCA start: with the decoder KL at lr 1e-4 the held-out loss rose up to 5x in 25 steps).
    `context` (`ContextSettings`: buckets, margin, padding stride): the student's encoder runs on the dynamic context
    it will use (passed to every encoder call as `encoder_context`), the teacher's targets stay full-window. Matching the
    full window's first frames is the wrong target there (the decoder reads a trimmed full-window output worse than a
    short-context one: base 80 % on the calibration clips, 34.2 against 11.6 % WER), so with a context the loss
    should be the decoder KL alone (`mse_weight=0`): what the decoder predicts from the short context against what
    the dense model predicts from the full one.
    Returns {"history": [(step, train, held-out)], "best": ..., "steps": steps run, "initial": held-out
    loss before refinement}.
    """
    from tqdm.auto import tqdm

    if kl_weight and token_targets is None:
        raise ValueError("kl_weight > 0 needs token_targets (teacher_tokens of the dense model)")
    if mse_weight and targets is None:
        raise ValueError("mse_weight > 0 needs targets (teacher_outputs of the dense model)")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(features)
    order = torch.randperm(n, generator=g)
    n_held = max(1, round(holdout * n)) if holdout > 0 else 0
    held, train_idx = order[n - n_held :], order[: n - n_held]

    params = trainable(model)
    keep = {id(p) for p in params}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0)
    enc = _encoder(model).eval()
    device, dtype = params[0].device, params[0].dtype

    if context is not None and not hasattr(enc, "context_plan"):
        raise ValueError("refining at a dynamic context needs a lite model (LiteWhisperEncoder)")

    def loss_fn(idx):
        x = features[idx].to(device, dtype)
        out = _enc_out(enc, x, context).float()
        loss = torch.zeros((), device=device)
        if mse_weight:
            length = out.shape[1]  # the full window, or the student's context
            w = frame_weights(real[idx].to(torch.long), length, pad_weight).to(device)
            loss = mse_weight * (((out - targets[idx, :length].to(device)) ** 2).mean(-1) * w).sum() / len(idx)
        if kl_weight:
            loss = loss + kl_weight * _kl(model, out.to(dtype), [token_targets[int(i)] for i in idx])
        return loss

    @torch.no_grad()
    def held_loss():
        chunks = held.split(batch_size)
        return sum(float(loss_fn(c)) * len(c) for c in chunks) / max(len(held), 1) if len(held) else float("nan")

    best = held_loss()
    history = [(0, None, best)]
    best_state = [p.detach().clone() for p in params]
    initial, bad, step, perm, pos = best, 0, 0, None, 0
    bar = tqdm(total=steps, desc="refinement", disable=not progress)
    for step in range(1, steps + 1):
        if perm is None or pos + batch_size > len(perm):  # one seeded shuffle per epoch
            perm, pos = train_idx[torch.randperm(len(train_idx), generator=g)], 0
        idx, pos = perm[pos : pos + batch_size], pos + batch_size
        loss = loss_fn(idx)  # eval mode throughout: no dropout noise, deterministic
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4g}", held=f"{best:.4g}")
        if step % eval_every == 0 or step == steps:
            h = held_loss()
            history.append((step, loss.item(), h))
            if not len(held) or h < best:
                best, bad = h, 0
                best_state = [p.detach().clone() for p in params]
            else:
                bad += 1
                if bad >= patience:
                    break
    bar.close()
    with torch.no_grad():
        for p, b in zip(params, best_state):
            p.copy_(b)
    for p, f in flags.items():
        p.requires_grad_(f)
    enc.eval()
    return {"history": history, "best": best, "initial": initial, "steps": step, "held_out": held.tolist()}
