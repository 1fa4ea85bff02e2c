"""Closed-form checks of the DPO numerics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from proxyreward_pl.training.losses import dpo_loss, fused_sequence_logps, sequence_logps, sft_loss


def naive_sequence_logps(logits, labels, mask):
    logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    return (logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_sequence_logps_equals_naive_log_softmax_gather(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 7), generator=g)
    mask = (torch.rand(3, 7, generator=g) > 0.4).long()
    mask[2] = 0  # a row with nothing to score sums to 0
    assert_close(sequence_logps(logits, labels, mask, chunk_size=chunk), naive_sequence_logps(logits, labels, mask))


def test_sequence_logps_bfloat16_is_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 50, generator=g) * 4).bfloat16()
    labels = torch.randint(0, 50, (2, 5), generator=g)
    mask = torch.ones(2, 5)
    got = sequence_logps(logits, labels, mask)
    assert got.dtype == torch.float32
    assert_close(got, naive_sequence_logps(logits.float(), labels, mask))


def test_fused_head_matches_logits_path_in_value_and_gradient():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 13, (2, 6), generator=g)
    mask = (torch.rand(2, 6, generator=g) > 0.3).long()
    upstream = torch.randn(2, generator=g, dtype=torch.float64)

    ref = (naive_sequence_logps(F.linear(hidden, weight, bias).double(), labels, mask) * upstream).sum()
    ref_grads = torch.autograd.grad(ref, (hidden, weight, bias))
    got = (fused_sequence_logps(hidden, weight, bias, labels, mask, chunk_size=4).double() * upstream).sum()
    got_grads = torch.autograd.grad(got, (hidden, weight, bias))
    assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert_close(a, b.to(a.dtype))
    assert torch.autograd.gradcheck(
        lambda h, w: fused_sequence_logps(h, w, None, labels, mask, chunk_size=5), (hidden, weight))


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-12.0, -3.5])
    losses, chosen, rejected = dpo_loss(logps, logps - 1, logps, logps - 1)
    assert_close(losses, torch.full((2,), math.log(2)))
    assert_close(chosen, torch.zeros(2)) and assert_close(rejected, torch.zeros(2))


def test_dpo_loss_hand_derived_values():
    # pi_c=-1, pi_r=-3, ref_c=-2, ref_r=-2  ->  chosen ratio 1, rejected ratio -1, h = 2
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    # sigmoid: -log s(0.1 * 2) = log(1 + e^-0.2)
    losses, chosen, rejected = dpo_loss(*args, beta=0.1)
    assert_close(losses, torch.tensor([math.log1p(math.exp(-0.2))]))
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)  # signs: chosen up
    # label smoothing e=0.1: 0.9 log(1+e^-0.2) + 0.1 log(1+e^0.2)
    losses, _, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2))
    assert losses.item() == pytest.approx(expected, rel=1e-6)
    # ipo with beta 0.25: (2 - 1/(2*0.25))^2 = (2 - 2)^2 = 0;  beta 0.5: (2 - 1)^2 = 1
    assert dpo_loss(*args, beta=0.25, loss_type="ipo")[0].item() == pytest.approx(0.0)
    assert dpo_loss(*args, beta=0.5, loss_type="ipo")[0].item() == pytest.approx(1.0)
    # hinge: relu(1 - 0.1 * 2) = 0.8;  beta 1: relu(1 - 2) = 0
    assert dpo_loss(*args, beta=0.1, loss_type="hinge")[0].item() == pytest.approx(0.8)
    assert dpo_loss(*args, beta=1.0, loss_type="hinge")[0].item() == pytest.approx(0.0)


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]))
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises chosen, lowers rejected
    assert pc.grad.item() == pytest.approx(-0.05)  # -beta * s(-0) = -0.1 * 0.5


def test_rewards_carry_no_gradient_and_bad_arguments_fail():
    x = torch.zeros(1, requires_grad=True)
    _, c, r = dpo_loss(x, x, torch.zeros(1), torch.zeros(1))
    assert not c.requires_grad and not r.requires_grad
    with pytest.raises(ValueError, match="loss_type"):  # ranges are DPOSettings' to check (tests/test_settings.py)
        dpo_loss(x, x, x, x, loss_type="kto")


def test_sft_loss_is_per_token_nll():
    assert_close(sft_loss(torch.tensor([-6.0, -1.0]), torch.tensor([3, 0])), torch.tensor([2.0, 1.0]))
