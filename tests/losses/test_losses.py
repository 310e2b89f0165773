"""medcl.losses against pytorch-metric-learning, lightly and hand-written double-loop references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss as LightlyNTXent
from pytorch_metric_learning import losses as pml

from medcl.errors import ConfigError, DataError
from medcl.losses import (
    LOSSES,
    BalancedSupConLoss,
    CLOCSLoss,
    DenseContrastLoss,
    GraphSupConLoss,
    HardNegativeSupConLoss,
    KeyQueue,
    MoCoV3Loss,
    NTXentLoss,
    PatientContrastLoss,
    PrototypeLoss,
    SupConLoss,
    build_loss,
    cosine_momentum,
    momentum_update,
    ontology_similarity,
)

f64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- naive references
def naive_out(z, temperature, pos_w, exclude, bias=None, anchors=None, anchor_w=None):
    """Double-loop SupCon "out": z (M, D) rows already normalised; callables on (anchor, key) indices."""
    rows = z.tolist()
    m = len(rows)
    anchors = range(m) if anchors is None else anchors
    total, wsum = 0.0, 0.0
    for i in anchors:
        def logit(k, i=i):
            return sum(a * b for a, b in zip(rows[i], rows[k])) / temperature + (bias(i, k) if bias else 0.0)
        keys = [k for k in range(m) if not exclude(i, k)]
        log_den = math.log(sum(math.exp(logit(k)) for k in keys))
        pos = [(k, pos_w(i, k)) for k in keys if pos_w(i, k) > 0]
        if not pos:
            continue
        li = -sum(w * (logit(k) - log_den) for k, w in pos) / sum(w for _, w in pos)
        aw = anchor_w(i) if anchor_w else 1.0
        total += aw * li
        wsum += aw
    return total / wsum


def sample_major(features):
    """(N, V, D) → normalised (N*V, D) rows in sample-major order (row = n * V + v)."""
    n, v, d = features.shape
    return F.normalize(features.reshape(n * v, d), dim=1), v


def naive_supcon(features, labels, t):
    z, v = sample_major(features)
    lab = (lambda r: r // v) if labels is None else (lambda r: int(labels[r // v]))
    return naive_out(z, t, lambda i, k: float(lab(i) == lab(k)), lambda i, k: i == k)


# ----------------------------------------------------------------------------- NT-Xent / SupCon vs libraries
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (f64, 1e-10)])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_matches_pml_and_lightly(dtype, tol, t):
    g = gen(1)
    n, d = 16, 8
    za = torch.randn(n, d, generator=g, dtype=dtype)
    zb = torch.randn(n, d, generator=g, dtype=dtype)
    grads, values = [], []
    for fn in (
        lambda a, b: NTXentLoss(t)(a, b),
        lambda a, b: pml.NTXentLoss(temperature=t)(torch.cat([a, b]), torch.arange(n).repeat(2)),
        lambda a, b: LightlyNTXent(temperature=t)(a, b),
    ):
        a, b = za.clone().requires_grad_(), zb.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        values.append(loss.item())
        grads.append(torch.cat([a.grad, b.grad]))
    assert values[0] == pytest.approx(values[1], abs=tol) and values[0] == pytest.approx(values[2], abs=tol)
    for other in grads[1:]:
        torch.testing.assert_close(grads[0], other, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (f64, 1e-10)])
@pytest.mark.parametrize("views", [2, 3])
def test_supcon_matches_pml(dtype, tol, views):
    g = gen(2)
    n, d = 12, 6
    feats = torch.randn(n, views, d, generator=g, dtype=dtype)
    labels = torch.randint(0, 4, (n,), generator=g)
    a = feats.clone().requires_grad_()
    ours = SupConLoss(0.1)(a, labels)
    ours.backward()
    b = feats.clone().requires_grad_()
    ref = pml.SupConLoss(temperature=0.1)(b.reshape(n * views, d), labels.repeat_interleave(views))
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), abs=tol)
    torch.testing.assert_close(a.grad, b.grad, atol=tol, rtol=0)
    assert ours.item() == pytest.approx(naive_supcon(feats.double(), labels, 0.1), abs=tol)


def test_supcon_without_labels_is_ntxent():
    g = gen(3)
    feats = torch.randn(10, 2, 5, generator=g, dtype=f64)
    assert SupConLoss(0.2)(feats).item() == pytest.approx(NTXentLoss(0.2)(feats[:, 0], feats[:, 1]).item(), abs=1e-12)
    feats3 = torch.randn(5, 3, 4, generator=g, dtype=f64)
    assert SupConLoss(0.2)(feats3).item() == pytest.approx(naive_supcon(feats3, None, 0.2), abs=1e-12)


def test_supcon_contrast_one_and_base_temperature():
    g = gen(4)
    feats = torch.randn(6, 3, 4, generator=g, dtype=f64)
    labels = torch.tensor([0, 1, 0, 2, 1, 1])
    z, v = sample_major(feats)
    ref = naive_out(z, 0.1, lambda i, k: float(labels[i // v] == labels[k // v]), lambda i, k: i == k,
                    anchors=range(0, 18, 3))  # view 0 of every sample
    assert SupConLoss(0.1, contrast_mode="one")(feats, labels).item() == pytest.approx(ref, abs=1e-12)
    base = SupConLoss(0.1, base_temperature=0.07)(feats, labels).item()
    assert base == pytest.approx(SupConLoss(0.1)(feats, labels).item() * 0.1 / 0.07, abs=1e-12)


def test_identical_embeddings_analytic_value():
    n = 7
    z = torch.ones(n, 4)
    assert NTXentLoss(0.1)(z, z).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)
    assert SupConLoss(0.1)(z[:, None].expand(n, 2, 4).contiguous()).item() == pytest.approx(
        math.log(2 * n - 1), rel=1e-6)


def test_unlabelled_rows_only_match_their_views():
    g = gen(5)
    feats = torch.randn(5, 2, 4, generator=g, dtype=f64)
    labels = torch.tensor([-1, -1, 0, 0, 1])
    z, v = sample_major(feats)

    def pos(i, k):
        li, lk = int(labels[i // v]), int(labels[k // v])
        return float(i // v == k // v or (li == lk and li >= 0))

    ref = naive_out(z, 0.1, pos, lambda i, k: i == k)
    assert SupConLoss(0.1)(feats, labels).item() == pytest.approx(ref, abs=1e-12)


def test_anchor_without_positive_is_skipped_not_nan():
    g = gen(6)
    feats = torch.randn(5, 1, 4, generator=g, dtype=f64, requires_grad=True)  # one view
    labels = torch.tensor([0, 0, 1, 2, 2])  # class 1 has a single sample → no positive
    loss = SupConLoss(0.1)(feats, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
    assert loss.item() == pytest.approx(naive_supcon(feats.detach(), labels, 0.1), abs=1e-12)
    lonely = torch.randn(3, 1, 4, requires_grad=True)
    zero = SupConLoss(0.1)(lonely, torch.tensor([0, 1, 2]))  # nobody has a positive
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(lonely.grad, torch.zeros_like(lonely))


# ----------------------------------------------------------------------------- stability
LIBRARY_CASES = {
    "ntxent": lambda x, lab: NTXentLoss(0.01)(x[:, 0], x[:, 1]),
    "supcon": lambda x, lab: SupConLoss(0.01)(x, lab),
    "moco_v3": lambda x, lab: MoCoV3Loss(0.01)(x[:, 0], x[:, 1]),
    "hard": lambda x, lab: HardNegativeSupConLoss(0.01, hard_pairs=[(0, 1)], hard_weight=3.0)(x, lab),
    "balanced": lambda x, lab: BalancedSupConLoss(0.01, mode="both", num_classes=3, dim=x.shape[-1])(x, lab),
    "prototype": lambda x, lab: PrototypeLoss(3, x.shape[-1], 0.01)(x, lab),
}


@pytest.mark.parametrize("name", sorted(LIBRARY_CASES))
def test_finite_at_low_temperature_large_norm_and_bf16(name):
    g = gen(7)
    x = torch.randn(16, 2, 8, generator=g) * 1e4
    lab = torch.randint(0, 3, (16,), generator=g)
    a = x.clone().requires_grad_()
    loss = LIBRARY_CASES[name](a, lab)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and loss.item() > 0
    b = x.to(torch.bfloat16).requires_grad_()
    loss16 = LIBRARY_CASES[name](b, lab)
    loss16.backward()
    assert loss16.dtype == torch.float32  # logits are taken to float32 before log-sum-exp
    assert torch.isfinite(loss16) and torch.isfinite(b.grad.float()).all()
    # bf16 similarities are ~3 significant digits: at T=0.01 that is a few units of logit.
    assert abs(loss16.item() - loss.item()) < 0.1 * loss.item() + 2.0


def test_exp_sum_would_overflow_but_we_do_not():
    z = F.normalize(torch.randn(8, 4, generator=gen(8)), dim=1)
    assert not torch.isfinite(torch.exp(z @ z.T / 0.001)).all()  # what exp/sum would do
    assert torch.isfinite(NTXentLoss(0.001)(z, z + 0.01))


# ----------------------------------------------------------------------------- gradcheck
_BALANCED = BalancedSupConLoss(0.3, mode="both", num_classes=2, dim=3, class_counts=[5, 1]).double()
GRADCHECK = {
    "ntxent": lambda x, lab: NTXentLoss(0.3)(x[:, 0], x[:, 1]),
    "supcon": lambda x, lab: SupConLoss(0.3)(x, lab),
    "moco_v3": lambda x, lab: MoCoV3Loss(0.3)(x[:, 0], x[:, 1], queue=torch.randn(3, 3, generator=gen(9), dtype=f64)),
    "patient": lambda x, lab: PatientContrastLoss(0.3)(x, lab),
    "clocs": lambda x, lab: CLOCSLoss(0.3)(x, lab),
    "hard": lambda x, lab: HardNegativeSupConLoss(0.3, hard_pairs=[(0, 1)], hard_weight=2.0)(x, lab),
    "graph": lambda x, lab: GraphSupConLoss(0.3, similarity=[[1, .5], [.5, 1]])(x, F.one_hot(lab % 2, 2)),
    "balanced": lambda x, lab: _BALANCED(x, lab % 2),
    "prototype": lambda x, lab: PrototypeLoss(2, 3, 0.3)(x, lab % 2),
    "dense": lambda x, lab: DenseContrastLoss(0.3, num_samples=None)(x.reshape(2, 3, 2, 2),
                                                                     x.reshape(2, 3, 2, 2).roll(1, -1) ** 2),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_gradcheck_float64(name):
    x = torch.randn(4, 2, 3, generator=gen(10), dtype=f64, requires_grad=True)
    lab = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda t: GRADCHECK[name](t, lab), (x,), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- patient-aware
def test_patient_contrast_is_supcon_on_patients():
    feats = torch.randn(6, 2, 4, generator=gen(11), dtype=f64)
    patient = torch.tensor([3, 3, 7, 9, 7, 3])
    assert PatientContrastLoss(0.1)(feats, patient).item() == pytest.approx(
        naive_supcon(feats, patient, 0.1), abs=1e-12)


@pytest.mark.parametrize("positives", ["patient", "record", "sample"])
def test_clocs_cross_view_reference(positives):
    feats = torch.randn(6, 3, 4, generator=gen(12), dtype=f64)
    patient = torch.tensor([0, 0, 1, 1, 1, 2])
    record = torch.tensor([0, 1, 2, 2, 3, 4])
    z, v = sample_major(feats)
    ids = {"patient": patient, "record": record, "sample": torch.arange(6)}[positives]
    ref = naive_out(z, 0.1, lambda i, k: float(int(ids[i // v]) == int(ids[k // v])),
                    lambda i, k: i % v == k % v)  # a view is contrasted only against other views
    loss = CLOCSLoss(0.1, positives=positives)(feats, patient, record)
    assert loss.item() == pytest.approx(ref, abs=1e-12)
    with pytest.raises(DataError, match="record"):
        CLOCSLoss(0.1, positives="record")(feats, patient)


# ----------------------------------------------------------------------------- hard negatives
def test_hard_negative_reference_and_weight_one_is_supcon():
    feats = torch.randn(6, 2, 4, generator=gen(13), dtype=f64)
    labels = torch.tensor([0, 1, 2, 0, 1, -1])
    classes = ["normal", "drusen", "cnv"]
    loss = HardNegativeSupConLoss(0.1, hard_pairs=[("drusen", "cnv")], hard_weight=4.0, classes=classes)(feats, labels)
    z, v = sample_major(feats)
    lab = [int(labels[r // v]) for r in range(12)]
    hard = {(1, 2), (2, 1)}

    def pos(i, k):
        return float(i // v == k // v or (lab[i] == lab[k] and lab[i] >= 0))

    def bias(i, k):
        return math.log(4.0) if (lab[i], lab[k]) in hard and not pos(i, k) else 0.0

    assert loss.item() == pytest.approx(naive_out(z, 0.1, pos, lambda i, k: i == k, bias=bias), abs=1e-12)
    same = HardNegativeSupConLoss(0.1, hard_pairs=[(1, 2)], hard_weight=1.0)(feats, labels)
    assert same.item() == pytest.approx(SupConLoss(0.1)(feats, labels).item(), abs=1e-12)
    assert loss.item() > same.item()  # heavier negatives → larger loss
    with pytest.raises(ConfigError, match="no classes list"):
        HardNegativeSupConLoss(hard_pairs=[("drusen", "cnv")])
    with pytest.raises(ConfigError, match="did you mean 'cnv'"):
        HardNegativeSupConLoss(hard_pairs=[("drusen", "cvn")], classes=classes)


# ----------------------------------------------------------------------------- ontology / multi-label
def test_ontology_similarity_shortest_path_and_adjacency():
    spec = {"classes": ["AF", "AFL", "SR", "STACH"], "edges": [["AF", "AFL", 0.5], ["SR", "STACH", 0.8],
                                                               ["AFL", "SR", 0.5]]}
    s, classes = ontology_similarity(spec, "shortest_path")
    assert classes == ["AF", "AFL", "SR", "STACH"]
    assert s[0, 0] == 1 and s[0, 1] == pytest.approx(0.5) and s[0, 2] == pytest.approx(0.25)
    assert s[0, 3] == pytest.approx(0.2) and torch.allclose(s, s.T)
    a, _ = ontology_similarity(spec, "adjacency")
    assert a[0, 1] == pytest.approx(0.5) and a[0, 2] == 0 and a[2, 3] == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="did you mean 'STACH'"):
        ontology_similarity({"classes": ["SR", "STACH"], "edges": [["SR", "STAHC"]]})
    with pytest.raises(ConfigError, match="did you mean 'edges'"):
        ontology_similarity({"classes": ["SR"], "edgez": []})


def test_graph_supcon_reference():
    spec = {"classes": ["a", "b", "c"], "edges": [["a", "b", 0.5]]}
    feats = torch.randn(5, 2, 4, generator=gen(14), dtype=f64)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=f64)
    loss = GraphSupConLoss(0.1, similarity=spec)(feats, y)
    s, _ = ontology_similarity(spec)
    s = s.double().tolist()
    z, v = sample_major(feats)

    def setsim(p, q):
        yp, yq = y[p].tolist(), y[q].tolist()

        def k(u, w):
            return sum(u[i] * s[i][j] * w[j] for i in range(3) for j in range(3))

        den = math.sqrt(k(yp, yp) * k(yq, yq))
        return k(yp, yq) / den if den > 0 else 0.0

    def w(i, k):
        return 1.0 if i // v == k // v else setsim(i // v, k // v)

    ref = naive_out(z, 0.1, w, lambda i, k: i == k)
    assert loss.item() == pytest.approx(ref, abs=1e-12)
    # identity similarity on single-label one-hot targets is plain SupCon
    lab = torch.tensor([0, 1, 0, 2, 1])
    eye = GraphSupConLoss(0.1, similarity=torch.eye(3))(feats, F.one_hot(lab, 3))
    assert eye.item() == pytest.approx(SupConLoss(0.1)(feats, lab).item(), abs=1e-12)


# ----------------------------------------------------------------------------- class balance
def test_balanced_class_weights_reference():
    feats = torch.randn(6, 2, 4, generator=gen(15), dtype=f64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    counts, beta = [100, 5], 0.99
    loss = BalancedSupConLoss(0.1, num_classes=2, beta=beta, class_counts=counts)(feats, labels)
    eff = [(1 - beta) / (1 - beta**c) for c in counts]
    cw = [e * 2 / sum(eff) for e in eff]
    z, v = sample_major(feats)
    lab = [int(labels[r // v]) for r in range(12)]
    ref = naive_out(z, 0.1, lambda i, k: float(lab[i] == lab[k]), lambda i, k: i == k,
                    anchor_w=lambda i: cw[lab[i]])
    assert loss.item() == pytest.approx(ref, abs=1e-12)
    assert cw[1] > cw[0]  # the rare class weighs more


def test_balanced_prototypes_bcl_reference():
    torch.manual_seed(0)
    feats = torch.randn(5, 2, 4, generator=gen(16), dtype=f64)
    labels = torch.tensor([0, 0, 0, 1, 2])
    mod = BalancedSupConLoss(0.1, mode="prototypes", num_classes=3, dim=4).double()
    loss = mod(feats, labels)
    z, v = sample_major(feats)
    keys = torch.cat([z, F.normalize(mod.prototypes.detach(), dim=1)])
    lab = [int(labels[r // v]) for r in range(10)] + [0, 1, 2]
    size = {c: lab.count(c) for c in range(3)}

    def bias(i, k):  # class-averaged denominator: 1/|class| without the anchor itself
        return -math.log(size[lab[k]] - (1 if lab[k] == lab[i] else 0))

    ref = naive_out(keys, 0.1, lambda i, k: float(lab[i] == lab[k]), lambda i, k: i == k, bias=bias,
                    anchors=range(10))
    assert loss.item() == pytest.approx(ref, abs=1e-12)
    loss.backward()
    assert mod.prototypes.grad is not None and mod.prototypes.grad.abs().sum() > 0


def test_balanced_running_counts():
    mod = BalancedSupConLoss(0.1, num_classes=3)
    feats = torch.randn(4, 2, 4)
    mod(feats, torch.tensor([0, 0, 1, -1]))
    assert mod.counts.tolist() == [2.0, 1.0, 0.0]
    mod.eval()
    mod(feats, torch.tensor([0, 0, 1, 2]))
    assert mod.counts.tolist() == [2.0, 1.0, 0.0]


# ----------------------------------------------------------------------------- prototypes
def test_prototype_etf_geometry_and_reference():
    mod = PrototypeLoss(num_classes=4, dim=6, temperature=0.2)
    p = mod.prototypes.double()
    cos = p @ p.T
    assert torch.allclose(cos.diagonal(), torch.ones(4, dtype=f64), atol=1e-6)
    off = cos[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 3), atol=1e-6)
    assert torch.equal(mod.prototypes, PrototypeLoss(4, 6, 0.2).prototypes)  # deterministic
    feats = torch.randn(5, 6, generator=gen(17), dtype=f64)
    labels = torch.tensor([0, 3, 2, -1, 1])
    ref, cnt = 0.0, 0
    for f, y in zip(feats.tolist(), labels.tolist()):
        if y < 0:
            continue
        nf = math.sqrt(sum(a * a for a in f))
        lg = [sum(a * b for a, b in zip(f, q)) / nf / 0.2 for q in p.tolist()]
        ref += math.log(sum(math.exp(v) for v in lg)) - lg[y]
        cnt += 1
    assert mod(feats, labels).item() == pytest.approx(ref / cnt, abs=1e-5)


def test_prototype_optimized_when_dim_below_classes():
    mod = PrototypeLoss(num_classes=6, dim=3)
    assert mod.method == "optimized"
    p = mod.prototypes
    cos = (p @ p.T)[~torch.eye(6, dtype=torch.bool)]
    assert cos.max() < 0.01  # 6 points on S^2: the octahedron has max cosine 0
    assert torch.equal(p, PrototypeLoss(num_classes=6, dim=3).prototypes)
    with pytest.raises(ConfigError, match="dim >= 6"):
        PrototypeLoss(num_classes=6, dim=3, method="etf")


# ----------------------------------------------------------------------------- MoCo v3 and helpers
def test_moco_v3_reference_with_queue():
    g = gen(18)
    q, k = torch.randn(4, 3, generator=g, dtype=f64), torch.randn(4, 3, generator=g, dtype=f64)
    queue = torch.randn(5, 3, generator=g, dtype=f64)
    qn, kn, un = (F.normalize(t, dim=1).tolist() for t in (q, k, queue))
    t = 0.2
    ref = 0.0
    for i in range(4):
        lg = [sum(a * b for a, b in zip(qn[i], c)) / t for c in kn + un]
        ref += math.log(sum(math.exp(v) for v in lg)) - lg[i]
    ref = ref / 4 * 2 * t
    assert MoCoV3Loss(t)(q, k, queue).item() == pytest.approx(ref, abs=1e-12)


def test_key_queue_fifo():
    qu = KeyQueue(size=5, dim=2)
    assert qu.keys().shape == (0, 2)
    qu.enqueue(torch.tensor([[1.0, 0], [0, 2.0]]))
    got = qu.keys()
    assert torch.equal(got, torch.tensor([[1.0, 0], [0, 1.0]]))
    qu.enqueue(torch.tensor([[3.0, 0]] * 4))  # wraps around: overwrites the oldest entry
    assert int(qu.filled) == 5 and int(qu.ptr) == 1
    assert torch.equal(qu.keys()[0], torch.tensor([1.0, 0])) and torch.equal(qu.keys()[1], torch.tensor([0, 1.0]))
    assert torch.equal(got, torch.tensor([[1.0, 0], [0, 1.0]]))  # earlier copy not modified


def test_momentum_update_and_schedule():
    online = torch.nn.Linear(3, 2)
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    momentum_update(online, target, 0.9)
    for po, pt in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(pt, 0.1 * po)
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        momentum_update(online, target, 1.5)


# ----------------------------------------------------------------------------- dense
def naive_ntxent(a, b, t):
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    return naive_out(z, t, lambda i, k: float(k == (i + n) % (2 * n)), lambda i, k: i == k)


def test_dense_2d_reference_all_locations():
    g = gen(19)
    fa = torch.randn(2, 4, 3, 2, generator=g, dtype=f64)
    fb = torch.randn(2, 4, 3, 2, generator=g, dtype=f64)
    loss = DenseContrastLoss(0.2, spatial_dims=2, global_weight=0.3, num_samples=None)(fa, fb)
    glob = naive_ntxent(fa.mean((2, 3)), fb.mean((2, 3)), 0.2)
    loc = sum(naive_ntxent(fa[i].reshape(4, -1).T, fb[i].reshape(4, -1).T, 0.2) for i in range(2)) / 2
    assert loss.item() == pytest.approx(0.3 * glob + 0.7 * loc, abs=1e-12)


def test_dense_3d_sampling_and_batch_negatives():
    g = gen(20)
    fa = torch.randn(2, 4, 3, 3, 2, generator=g, dtype=f64)
    fb = fa + 0.1 * torch.randn(fa.shape, generator=g, dtype=f64)
    mod = DenseContrastLoss(0.2, spatial_dims=3, global_weight=0.0, num_samples=5, local_negatives="batch")
    l1 = mod(fa, fb, generator=gen(0))
    assert l1.item() == pytest.approx(mod(fa, fb, generator=gen(0)).item(), abs=0)  # same locations
    idx = torch.randperm(18, generator=gen(0))[:5].sort().values
    a = fa.reshape(2, 4, -1)[..., idx].transpose(1, 2).reshape(-1, 4)
    b = fb.reshape(2, 4, -1)[..., idx].transpose(1, 2).reshape(-1, 4)
    assert l1.item() == pytest.approx(naive_ntxent(a, b, 0.2), abs=1e-12)
    with pytest.raises(DataError, match="3 spatial dims"):
        mod(fa[..., 0], fb[..., 0])


# ----------------------------------------------------------------------------- registry
def _views(n=6, v=2, d=8):
    return torch.randn(n, v, d, generator=gen(21))


EXAMPLES = {
    "ntxent": ({}, lambda: (_views()[:, 0], _views()[:, 1])),
    "clip": ({"similarity": [[1.0, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.0]]},
             lambda: (_views()[:, 0], _views()[:, 1], torch.tensor([0, 1, 0, 1, 2, 2]))),
    "infonce": ({"temperature": 0.2}, lambda: (_views()[:, 0], _views()[:, 1])),
    "supcon": ({}, lambda: (_views(), torch.tensor([0, 1, 0, 1, 2, 2]))),
    "moco_v3": ({}, lambda: (_views()[:, 0], _views()[:, 1].detach(), torch.randn(4, 8))),
    "patient": ({}, lambda: (_views(), torch.tensor([5, 5, 6, 7, 7, 7]))),
    "clocs": ({"positives": "patient"}, lambda: (_views(v=3), torch.tensor([5, 5, 6, 7, 7, 7]))),
    "hard_negative_supcon": ({"hard_pairs": [["a", "b"]], "classes": ["a", "b", "c"]},
                             lambda: (_views(), torch.tensor([0, 1, 0, 1, 2, 2]))),
    "graph_supcon": ({"similarity": {"classes": ["x", "y"], "edges": [["x", "y", 0.5]]}},
                     lambda: (_views(), torch.tensor([[1, 0], [0, 1], [1, 1], [1, 0], [0, 0], [0, 1]]))),
    "balanced_supcon": ({"mode": "both", "num_classes": 3, "dim": 8},
                        lambda: (_views(), torch.tensor([0, 0, 0, 0, 1, 2]))),
    "prototype": ({"num_classes": 3, "dim": 8}, lambda: (_views(), torch.tensor([0, 1, 2, 0, 1, 2]))),
    "dense": ({"spatial_dims": 3, "num_samples": 4}, lambda: (torch.randn(2, 8, 2, 2, 2), torch.randn(2, 8, 2, 2, 2))),
}


def test_every_registry_entry_has_an_example():
    assert set(EXAMPLES) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_entry_builds_and_runs(name):
    kwargs, inputs = EXAMPLES[name]
    loss_fn = build_loss(name, **kwargs)
    assert isinstance(loss_fn, LOSSES[name])
    args = [a.requires_grad_() if a.is_floating_point() and i == 0 else a for i, a in enumerate(inputs())]
    loss = loss_fn(*args)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(args[0].grad).all() and args[0].grad.abs().sum() > 0


def test_gather_flag_is_a_no_op_on_one_process():
    x = _views(v=2)
    lab = torch.tensor([0, 1, 0, 1, 2, 2])
    assert SupConLoss(gather_distributed=True)(x, lab).item() == SupConLoss()(x, lab).item()
    assert NTXentLoss(gather_distributed=True)(x[:, 0], x[:, 1]).item() == NTXentLoss()(x[:, 0], x[:, 1]).item()


def test_bad_names_and_kwargs_say_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'supcon'"):
        build_loss("supcom")
    with pytest.raises(ConfigError, match="did you mean 'temperature'") as err:
        build_loss("ntxent", temperatur=0.1)
    assert "pretrain.loss.temperatur" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'all'"):
        build_loss("supcon", contrast_mode="al")
    with pytest.raises(ConfigError, match="temperature"):
        build_loss("supcon", temperature=0)
    with pytest.raises(ConfigError, match="did you mean 'prototypes'"):
        build_loss("balanced_supcon", mode="prototype", num_classes=2, dim=4)
    with pytest.raises(ConfigError):
        build_loss("dense", spatial_dims=4)
    assert isinstance(build_loss("Hard-Negative-SupCon", hard_pairs=[[0, 1]]), HardNegativeSupConLoss)


def test_bad_shapes_raise_data_error():
    with pytest.raises(DataError, match=r"\(N, V, D\)"):
        SupConLoss()(torch.randn(4, 8))
    with pytest.raises(DataError, match="labels"):
        SupConLoss()(torch.randn(4, 2, 8), torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"\(N,\) integer ids"):
        SupConLoss()(torch.randn(4, 2, 8), torch.ones(4, 3))
    with pytest.raises(DataError, match="multi-hot"):
        GraphSupConLoss()(torch.randn(4, 2, 8), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(DataError, match="differ"):
        NTXentLoss()(torch.randn(4, 8), torch.randn(3, 8))
