"""Tests for the discriminative and foreground losses."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_shiftseg.training.loss import discriminative_loss, foreground_loss
from napari_shiftseg.util._errors import ShiftSegError


def reference_loss(embeddings, instances, delta_v, delta_d, background_as_instance):
    """Plain per-item, per-instance loops straight from the paper's formulas."""
    pulls, pushes, regs = [], [], []
    for emb, lab in zip(embeddings, instances):
        x = emb.reshape(emb.shape[0], -1).T
        lab = lab.reshape(-1)
        ids = [int(i) for i in torch.unique(lab) if background_as_instance or i != 0]
        if not ids:
            continue
        means = [x[lab == i].mean(dim=0) for i in ids]
        pull = [
            (torch.clamp(torch.linalg.norm(mu - x[lab == i], dim=1) - delta_v, min=0) ** 2).mean()
            for mu, i in zip(means, ids)
        ]
        pulls.append(sum(pull) / len(ids))
        push = [
            torch.clamp(2 * delta_d - torch.linalg.norm(a - b), min=0) ** 2
            for ia, a in enumerate(means)
            for ib, b in enumerate(means)
            if ia != ib
        ]
        pushes.append(sum(push) / len(push) if push else torch.tensor(0.0, dtype=x.dtype))
        regs.append(sum(torch.linalg.norm(mu) for mu in means) / len(ids))
    if not pulls:
        return 0.0, 0.0, 0.0
    return tuple(float(sum(t) / len(t)) for t in (pulls, pushes, regs))


@st.composite
def loss_inputs(draw):
    """Random (embeddings, instances) with empty items and non-consecutive ids."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, 3))
    n_channels = draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=2, max_size=3)))
    n_ids = draw(st.integers(1, 6))
    # Sparse, large ids check that nothing assumes consecutive labels.
    id_pool = np.concatenate([[0], rng.choice(10**9, size=n_ids, replace=False) + 1])
    instances = rng.choice(id_pool, size=(batch, *spatial))
    empty = draw(st.lists(st.booleans(), min_size=batch, max_size=batch))
    instances[np.array(empty)] = 0
    scale = draw(st.sampled_from([0.5, 3.0]))
    embeddings = rng.normal(scale=scale, size=(batch, n_channels, *spatial))
    return torch.from_numpy(embeddings), torch.from_numpy(instances)


@settings(max_examples=60, deadline=None)
@given(
    inputs=loss_inputs(),
    delta_v=st.sampled_from([0.0, 0.5]),
    background_as_instance=st.booleans(),
)
def test_matches_reference(inputs, delta_v, background_as_instance):
    embeddings, instances = inputs
    loss, parts = discriminative_loss(
        embeddings,
        instances,
        delta_v=delta_v,
        delta_d=1.5,
        alpha=1.0,
        beta=2.0,
        gamma=0.1,
        background_as_instance=background_as_instance,
    )
    pull, push, reg = reference_loss(embeddings, instances, delta_v, 1.5, background_as_instance)
    assert float(parts["pull"]) == pytest.approx(pull, abs=1e-6)
    assert float(parts["push"]) == pytest.approx(push, abs=1e-6)
    assert float(parts["reg"]) == pytest.approx(reg, abs=1e-6)
    assert float(loss) == pytest.approx(pull + 2.0 * push + 0.1 * reg, abs=1e-6)


def test_background_only_gives_zero_loss_that_backpropagates():
    embeddings = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss, parts = discriminative_loss(embeddings, torch.zeros(2, 4, 4, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_single_instance_has_no_push():
    instances = torch.zeros(1, 4, 4, dtype=torch.int64)
    instances[0, 1:3, 1:3] = 7
    _, parts = discriminative_loss(torch.randn(1, 2, 4, 4), instances)
    assert float(parts["push"]) == 0.0


def test_gradients_finite_when_pixels_coincide_with_mean():
    # Every instance is constant (pull distance 0), one is at the origin (reg norm 0) and two
    # have identical means (push distance 0): all three square roots are at zero.
    embeddings = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    embeddings[0, :, 2:] = 1.0
    instances = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])[None]
    embeddings.requires_grad_(True)
    for background_as_instance in (False, True):
        embeddings.grad = None
        loss, _ = discriminative_loss(
            embeddings, instances, background_as_instance=background_as_instance
        )
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("spatial", [(6, 6), (3, 4, 4)])
def test_loss_decreases_under_adam(spatial):
    gen = torch.Generator().manual_seed(0)
    instances = torch.randint(0, 4, (2, *spatial), generator=gen)
    embeddings = torch.nn.Parameter(0.1 * torch.randn(2, 3, *spatial, generator=gen))
    optimiser = torch.optim.Adam([embeddings], lr=0.1)
    losses = []
    for _ in range(20):
        optimiser.zero_grad()
        loss, _ = discriminative_loss(embeddings, instances, delta_v=0.5)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_float32_and_uint8_labels():
    instances = torch.randint(0, 3, (1, 5, 5), dtype=torch.uint8)
    loss, _ = discriminative_loss(torch.randn(1, 2, 5, 5), instances)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


EMB = torch.zeros(1, 2, 4, 4)
LAB = torch.zeros(1, 4, 4, dtype=torch.long)


@pytest.mark.parametrize(
    ("embeddings", "instances", "kwargs", "error", "match"),
    [
        (EMB[..., 0], LAB[..., 0], {}, ShiftSegError, "shape"),
        (EMB, torch.zeros(1, 4, 5, dtype=torch.long), {}, ShiftSegError, "shape"),
        (EMB, LAB - 1, {}, ShiftSegError, ">= 0"),
        (EMB, LAB.float(), {}, TypeError, "integer"),
        (EMB.long(), LAB, {}, TypeError, "float"),
        (EMB.numpy(), LAB, {}, TypeError, "Tensor"),
        (EMB, LAB, {"delta_v": -1}, ShiftSegError, "delta_v"),
    ],
)
def test_discriminative_loss_rejects_bad_input(embeddings, instances, kwargs, error, match):
    with pytest.raises(error, match=match):
        discriminative_loss(embeddings, instances, **kwargs)


def test_foreground_loss():
    instances = torch.tensor([[[0, 3], [5, 0]]])
    logits = torch.tensor([[[-2.0, 1.0], [3.0, 0.5]]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    )
    assert float(foreground_loss(logits, instances)) == pytest.approx(float(expected))
    with pytest.raises(ShiftSegError, match="same shape"):
        foreground_loss(logits, instances[..., :1])
    with pytest.raises(TypeError, match="float"):
        foreground_loss(instances, instances)


def test_push_per_instance_does_not_dilute_in_crowded_windows():
    """Two touching objects whose means are too close, plus far-away objects already apart.

    The pull term is a mean over instances. Per pair (the paper), every far object added lowers
    the close pair's push *relative to the pull* by another factor; per instance, push and pull
    are both means over instances, so their balance does not depend on the crowd.
    """
    def terms(n_far, per_instance):
        n = 2 + n_far
        emb = torch.zeros(1, 2, 1, n)
        labels = torch.arange(1, n + 1).reshape(1, 1, n)
        emb[0, 0, 0, 1] = 1.0                                   # the close pair: means 1 apart
        emb[0, 0, 0, 2:] = 100.0 * torch.arange(1, n_far + 1)   # far: beyond the margin
        _, parts = discriminative_loss(emb, labels, delta_v=0.5, delta_d=3.0, gamma=0.0,
                                       push_per_instance=per_instance)
        return float(parts["push"]) * n                         # push relative to a mean over instances

    hinge = 2 * (6.0 - 1.0) ** 2                                # both orders of the close pair
    assert terms(0, True) == pytest.approx(hinge) and terms(6, True) == pytest.approx(hinge)
    assert terms(0, False) == pytest.approx(hinge) and terms(6, False) == pytest.approx(hinge / 7)
