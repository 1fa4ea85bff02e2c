"""Pure numerics of DPO: per-sequence log-probabilities and the preference losses.

Conventions: `logits[b, t]` is the distribution that scores `labels[b, t]` (the caller has shifted), and
`loss_mask[b, t]` is 1 on completion tokens, 0 on prompt and padding. Sequence log-probabilities are
sums over completion tokens, as in DPO and TRL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 logits are reduced in float32; float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(label) for rows of logits [N, V]: gather minus logsumexp, in float32, `chunk_size` rows at a time
    so that no float32 copy of all N x V logits exists at once."""
    out = []
    for lg, lb in zip(logits.split(chunk_size), labels.split(chunk_size), strict=True):
        lg = _acc(lg)
        out.append(lg.gather(-1, lb.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.cat(out) if out else _acc(logits.new_zeros(0))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor,
                   chunk_size: int = 1024) -> torch.Tensor:
    """Sum of per-token log-probs of `labels` where `loss_mask` is 1: Tensor[B] (at least float32).

    Only masked-in positions are scored, so prompt and padding cost no log-softmax at all."""
    rows, cols = loss_mask.bool().nonzero(as_tuple=True)
    per_token = token_logps(logits[rows, cols], labels[rows, cols], chunk_size)
    return per_token.new_zeros(labels.shape[0]).index_add(0, rows, per_token)


class _FusedHeadLogps(torch.autograd.Function):
    """log p(label | hidden) through a linear LM head, tile by tile, keeping no logits for backward.

    Forward saves only the hidden rows and each row's logsumexp; backward recomputes one tile of logits
    at a time. Peak extra memory is one [chunk, V] tile instead of [N, V] logits plus their softmax."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size):
        lse, picked = [], []
        for h, lb in zip(hidden.split(chunk_size), labels.split(chunk_size), strict=True):
            lg = _acc(F.linear(h, weight, bias))
            lse.append(torch.logsumexp(lg, dim=-1))
            picked.append(lg.gather(-1, lb.unsqueeze(-1)).squeeze(-1))
        lse_all = torch.cat(lse) if lse else _acc(hidden.new_zeros(0))
        out = (torch.cat(picked) - lse_all) if picked else lse_all
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.tensor([]), labels, lse_all)
        ctx.has_bias = bias is not None
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = _acc(torch.zeros_like(weight)) if need_w else None
        grad_b = _acc(torch.zeros_like(bias)) if (need_b and bias is not None) else None
        n = ctx.chunk_size
        for i in range(0, hidden.shape[0], n):
            h, lb, g = hidden[i:i + n], labels[i:i + n], grad_out[i:i + n]
            lg = _acc(F.linear(h, weight, bias))
            # d logp / d logits = onehot(label) - softmax
            d = -torch.exp(lg - lse[i:i + n].unsqueeze(-1))
            d.scatter_add_(-1, lb.unsqueeze(-1), torch.ones_like(g).unsqueeze(-1))
            d = d * g.unsqueeze(-1)
            if need_h:
                grad_h[i:i + n] = (d.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += d.t() @ _acc(h)
            if grad_b is not None:
                grad_b += d.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None)


def fused_sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, loss_mask: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """`sequence_logps(F.linear(hidden, weight, bias), labels, loss_mask)` without building the logits:
    the LM head runs only on masked-in positions, a tile at a time, in forward and backward."""
    rows, cols = loss_mask.bool().nonzero(as_tuple=True)
    per_token = _FusedHeadLogps.apply(hidden[rows, cols], weight, bias, labels[rows, cols], chunk_size)
    return per_token.new_zeros(labels.shape[0]).index_add(0, rows, per_token)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference losses and implicit rewards `beta * (policy - ref)`.

    With h = (pi_c - ref_c) - (pi_r - ref_r):
      sigmoid  -(1-e) log s(beta h) - e log s(-beta h)        DPO; e > 0 is conservative DPO (label smoothing)
      ipo      (h - 1/(2 beta))^2                             IPO (beta plays tau)
      hinge    relu(1 - beta h)                               SLiC
    Returns (losses[B], chosen_rewards[B], rejected_rewards[B]); rewards carry no gradient.
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # DPOSettings checks it; a direct caller gets told too
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def sft_loss(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-pair negative log-likelihood of the chosen answer per token (the RPO term)."""
    return -policy_chosen_logps / chosen_lengths.clamp(min=1)


