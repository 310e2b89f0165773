"""Optimisers (LARS against hand computation and torch SGD) and LR / momentum schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medcl.engine.optim import LARS, OPTIMIZERS, build_optimizer, param_groups_weight_decay
from medcl.engine.schedule import build_scheduler, cosine_momentum, warmup_cosine
from medcl.errors import ConfigError


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))  # 1-D: no adaptation / decay
    lr, wd, m, eta = 0.5, 0.1, 0.9, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=m, trust_coefficient=eta)

    gw1, gb1 = [1.0, 0.0], [0.5, 0.25]
    w.grad = torch.tensor([gw1], dtype=torch.float64)
    b.grad = torch.tensor(gb1, dtype=torch.float64)
    opt.step()
    # hand computation, step 1
    d = [gw1[0] + wd * 3.0, gw1[1] + wd * 4.0]  # [1.3, 0.4]
    q = eta * 5.0 / math.sqrt(d[0] ** 2 + d[1] ** 2)
    mu_w = [q * d[0], q * d[1]]
    w1 = [3.0 - lr * mu_w[0], 4.0 - lr * mu_w[1]]
    mu_b = list(gb1)
    b1 = [1.0 - lr * mu_b[0], -2.0 - lr * mu_b[1]]
    assert torch.allclose(w.detach(), torch.tensor([w1], dtype=torch.float64), atol=1e-14, rtol=0)
    assert torch.allclose(b.detach(), torch.tensor(b1, dtype=torch.float64), atol=1e-14, rtol=0)

    # step 2: momentum carries over
    gw2, gb2 = [-0.5, 2.0], [0.0, 1.0]
    w.grad = torch.tensor([gw2], dtype=torch.float64)
    b.grad = torch.tensor(gb2, dtype=torch.float64)
    opt.step()
    d2 = [gw2[0] + wd * w1[0], gw2[1] + wd * w1[1]]
    q2 = eta * math.hypot(*w1) / math.hypot(*d2)
    mu_w = [m * mu_w[0] + q2 * d2[0], m * mu_w[1] + q2 * d2[1]]
    w2 = [w1[0] - lr * mu_w[0], w1[1] - lr * mu_w[1]]
    mu_b = [m * mu_b[0] + gb2[0], m * mu_b[1] + gb2[1]]
    b2 = [b1[0] - lr * mu_b[0], b1[1] - lr * mu_b[1]]
    assert torch.allclose(w.detach(), torch.tensor([w2], dtype=torch.float64), atol=1e-14, rtol=0)
    assert torch.allclose(b.detach(), torch.tensor(b2, dtype=torch.float64), atol=1e-14, rtol=0)


def test_lars_excluded_params_equal_torch_sgd_momentum():
    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    ref = nn.Linear(4, 3)
    ref.load_state_dict(a.state_dict())
    ours = LARS(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5, lars_exclude=True)
    theirs = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, opt in ((a, ours), (ref, theirs)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_lars_zero_weight_uses_ratio_one():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.1)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(w.detach(), -torch.ones(2, 2))


def test_param_groups_split_bias_and_norm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 5, 5))
    groups = param_groups_weight_decay(model, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[0].weight), id(model[3].weight)}
    assert no_decay == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"] is True


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_build_optimizer_registry(name):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, name, lr=0.01, weight_decay=0.1)
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[1]["weight_decay"] == 0.0
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight.detach())


def test_build_optimizer_unknown_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'lars'"):
        build_optimizer(nn.Linear(2, 2), "lasr", lr=0.1)


def test_warmup_cosine_values():
    total, warm, min_ratio = 100, 10, 0.01
    f = [warmup_cosine(s, total_steps=total, warmup_steps=warm, min_ratio=min_ratio) for s in range(total)]
    assert f[0] == pytest.approx(0.1)  # first update already moves
    assert f[4] == pytest.approx(0.5)
    assert f[warm - 1] == pytest.approx(1.0) and f[warm] == pytest.approx(1.0)  # peak after warmup
    assert max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))  # monotone decay
    mid = warm + (total - warm) // 2
    assert f[mid] == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)
    assert f[-1] == pytest.approx(min_ratio, abs=1e-3)  # end ~ min
    assert warmup_cosine(total + 5, total_steps=total, warmup_steps=warm, min_ratio=min_ratio) == pytest.approx(min_ratio)


def test_scheduler_drives_lr_and_state_round_trips():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4, min_lr_ratio=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[3] == pytest.approx(0.4)
    # a rebuilt scheduler loaded from the state continues on the same curve
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    sched2 = build_scheduler(opt2, total_steps=999, warmup_steps=1)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert sched2.lr_lambdas[0].total_steps == 20
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_build_scheduler_rejects_bad_settings():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_scheduler(opt, total_steps=10, warmup_steps=10)
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        build_scheduler(opt, total_steps=10, name="cosin")


def test_cosine_momentum():
    assert cosine_momentum(0, 100, base=0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, base=0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, base=0.99) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_kernels_on_cpu_match_the_per_tensor_loop(name):
    """medcl's AdamW/SGD run the fused kernel on CPU; ten steps equal torch's per-tensor loop within rounding."""
    torch.manual_seed(0)
    # no bias before the norm: its gradient is zero up to rounding, which Adam would blow up to full steps
    ref = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    net = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    net.load_state_dict(ref.state_dict())
    opt = build_optimizer(net, name, lr=0.05, weight_decay=0.1)
    assert all(g.get("fused") for g in opt.param_groups)
    groups = param_groups_weight_decay(ref, 0.1)
    plain = (torch.optim.AdamW(groups, lr=0.05, weight_decay=0.1, foreach=False) if name == "adamw"
             else torch.optim.SGD(groups, lr=0.05, weight_decay=0.1, momentum=0.9, foreach=False))
    for _ in range(10):
        x = torch.randn(5, 2, 6, 6)
        for model, o in ((net, opt), (ref, plain)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_adamw_step_equals_the_papers_update():
    """One step of medcl's (fused) AdamW from zero state: w - lr * (wd * w + g / (|g| + eps)) (Loshchilov & Hutter)."""
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    g = torch.tensor([[0.1, -0.4], [2.0, 0.0]])
    p = nn.Parameter(w0.clone())
    opt = build_optimizer([p], "adamw", lr=0.01, weight_decay=0.5, eps=1e-8)
    p.grad = g.clone()
    opt.step()
    # bias-corrected first step: m_hat = g, v_hat = g^2, so the Adam term is g / (|g| + eps)
    expect = w0 * (1 - 0.01 * 0.5) - 0.01 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(p.detach(), expect, rtol=1e-6, atol=1e-7)


def test_fused_is_left_off_where_the_kernels_do_not_take_the_parameters():
    from medcl.engine.optim import fused_available

    assert fused_available([torch.zeros(2, requires_grad=True)])
    assert not fused_available([torch.zeros(2, dtype=torch.int64)])
    assert not fused_available([torch.zeros(2, device="meta")])
    assert not fused_available([])
