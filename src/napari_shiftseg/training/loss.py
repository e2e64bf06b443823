"""Training losses: the discriminative (metric-learning) loss and a foreground loss.

The discriminative loss of De Brabandere et al. (2017) pulls the embeddings of each instance
towards their mean and pushes the means of different instances apart (see THEORY.md):

- pull = mean_c mean_{i in c} max(0, ||mu_c - x_i|| - delta_v)^2
- push = mean_{c != c'} max(0, 2 delta_d - ||mu_c - mu_c'||)^2
- reg  = mean_c ||mu_c||
- loss = alpha pull + beta push + gamma reg

Each term is computed per batch item and averaged over the items that contain at least one
instance. The implementation is fully vectorised: instance ids are relabelled to consecutive
segment ids over the whole batch, sums and counts are scattered with ``index_add``, and the
pairwise distances of all means come from one ``torch.cdist`` masked to pairs of the same item.
There is no Python loop over instances or batch items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_shiftseg.util._errors import ShiftSegError

__all__ = ["discriminative_loss", "foreground_loss"]

# Squared norms are clamped to this before the square root: d sqrt(s)/ds = 1/(2 sqrt(s)) is
# infinite at s = 0, which happens whenever an instance has a single pixel or all its pixels
# coincide with the mean. The clamp makes the gradient exactly 0 there instead of NaN.
_EPS = 1e-12


def _safe_norm(squared: torch.Tensor) -> torch.Tensor:
    """Square root of squared norms with a finite gradient at zero."""
    return torch.sqrt(torch.clamp(squared, min=_EPS))


def _check_labels(instances: torch.Tensor, name: str) -> None:
    """Raise unless ``instances`` is an integer (or bool) tensor."""
    if not isinstance(instances, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(instances).__name__}")
    if instances.dtype.is_floating_point or instances.dtype.is_complex:
        raise TypeError(f"{name} must hold integer instance ids, got dtype {instances.dtype}")


def _segments(
    instances: torch.Tensor, background_as_instance: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Map every kept pixel of a (B, *spatial) label tensor to a batch-wide segment id.

    Returns
    -------
    keep : torch.Tensor
        Boolean (B * P,) mask of the pixels that belong to an instance.
    segment : torch.Tensor
        int64 (n_kept,) segment id in 0..K-1 of each kept pixel; segments are unique per
        (batch item, instance id) pair.
    item : torch.Tensor
        int64 (K,) batch item of each segment.
    n_segments : int
        K, the number of instances in the whole batch.
    """
    batch = instances.shape[0]
    labels = instances.reshape(batch, -1).to(torch.int64)
    keep = torch.ones_like(labels, dtype=torch.bool) if background_as_instance else labels > 0
    items = torch.arange(batch, device=labels.device).unsqueeze(1).expand_as(labels)
    labels, items = labels[keep], items[keep]
    # Two passes instead of one key ``item * (max_id + 1) + id``: ids are arbitrary (up to
    # 2^63), so that key could overflow; relabelling the ids first bounds the key by B * K.
    _, ids = torch.unique(labels, return_inverse=True)
    n_ids = int(ids.max()) + 1 if ids.numel() else 1
    keys, segment = torch.unique(items * n_ids + ids, return_inverse=True)
    return keep.reshape(-1), segment, keys // n_ids, int(keys.numel())


def _mean_over_items(per_segment: torch.Tensor, item: torch.Tensor, batch: int) -> torch.Tensor:
    """Sum per-segment values per batch item, averaged over the items that have instances.

    ``per_segment`` must already be divided by its item's normaliser (number of instances or
    of instance pairs), so the per-item sum is that item's term.
    """
    per_item = per_segment.new_zeros(batch).index_add(0, item, per_segment)
    n_items = torch.bincount(item, minlength=batch).gt(0).sum().clamp(min=1)
    return per_item.sum() / n_items


def discriminative_loss(
    embeddings: torch.Tensor,
    instances: torch.Tensor,
    delta_v: float = 0.0,
    delta_d: float = 3.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1e-4,
    background_as_instance: bool = False,
    push_per_instance: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminative loss of De Brabandere et al. (2017) for a batch of embeddings.

    Parameters
    ----------
    embeddings : torch.Tensor
        Float tensor (B, E, *spatial) with 2 or 3 spatial axes.
    instances : torch.Tensor
        Integer tensor (B, *spatial) with the same spatial shape. 0 is background, every other
        value is an instance id (ids need not be consecutive; they are per batch item, so equal
        ids in different items are different instances).
    delta_v : float
        Pull margin: pixels closer than this to their instance mean are not pulled.
    delta_d : float
        Push margin: means further apart than ``2 * delta_d`` are not pushed.
    alpha, beta, gamma : float
        Weights of the pull, push and regularisation terms.
    background_as_instance : bool
        If True, label 0 is treated as one more instance (the paper's reference setting);
        otherwise background pixels are ignored.
    push_per_instance : bool
        Divide the push term by the number of instances instead of the number of pairs (the
        paper). With spatial embeddings far-apart objects are always apart, so in a crowded
        window of C objects the few touching pairs would get 1/(C-1) of the push they get in a
        sparse one; per instance, each object's push does not depend on how many others the
        window holds.

    Returns
    -------
    loss : torch.Tensor
        Scalar ``alpha * pull + beta * push + gamma * reg``.
    parts : dict of str to torch.Tensor
        The unweighted scalar terms ``'pull'``, ``'push'`` and ``'reg'``.

    Raises
    ------
    TypeError
        If an input is not a tensor or has the wrong kind of dtype.
    ShiftSegError
        If the shapes do not match, ids are negative or a margin is negative.

    Notes
    -----
    Each term is computed per batch item and then averaged over the items that contain at
    least one instance; an item with a single instance has push 0, and a batch without any
    instance gives a zero loss that still backpropagates (to zero gradients).
    """
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.dtype.is_floating_point:
        raise TypeError(f"embeddings must be a float tensor, got dtype {embeddings.dtype}")
    _check_labels(instances, "instances")
    if embeddings.ndim not in (4, 5):
        raise ShiftSegError(
            f"embeddings must have shape (B, E, y, x) or (B, E, z, y, x), "
            f"got {tuple(embeddings.shape)}"
        )
    expected = (embeddings.shape[0], *embeddings.shape[2:])
    if tuple(instances.shape) != expected:
        raise ShiftSegError(
            f"instances must have shape {expected} to match embeddings "
            f"{tuple(embeddings.shape)}, got {tuple(instances.shape)}"
        )
    if delta_v < 0 or delta_d < 0:
        raise ShiftSegError(
            f"delta_v and delta_d must be >= 0, got delta_v={delta_v}, delta_d={delta_d}"
        )
    instances = instances.to(embeddings.device)
    if instances.numel() and instances.min() < 0:
        raise ShiftSegError(f"instance ids must be >= 0, got {int(instances.min())}")

    batch, n_channels = embeddings.shape[:2]
    keep, segment, item, n_segments = _segments(instances, background_as_instance)
    x = embeddings.movedim(1, -1).reshape(-1, n_channels)[keep]

    if n_segments == 0:
        # Multiply by zero rather than return a constant so that backward() still works.
        zero = embeddings.sum() * 0.0
        return zero, {"pull": zero, "push": zero, "reg": zero}

    counts = torch.bincount(segment, minlength=n_segments).to(x.dtype)
    means = x.new_zeros(n_segments, n_channels).index_add(0, segment, x) / counts[:, None]
    # Instances and instance pairs per item, broadcast back to each segment as normalisers.
    n_inst = torch.bincount(item, minlength=batch).to(x.dtype)[item]

    dist = _safe_norm((means[segment] - x).square().sum(dim=1))
    hinge = torch.clamp(dist - delta_v, min=0.0).square()
    pull_seg = x.new_zeros(n_segments).index_add(0, segment, hinge) / counts / n_inst

    # cdist without the matrix-multiply shortcut: exact distances (no cancellation), and its
    # backward is defined as 0 at zero distance (e.g. the diagonal), so gradients stay finite.
    pair_dist = torch.cdist(
        means[None], means[None], compute_mode="donot_use_mm_for_euclid_dist"
    )[0]
    same_item = item[:, None] == item[None, :]
    same_item.fill_diagonal_(False)
    pair_hinge = torch.clamp(2.0 * delta_d - pair_dist, min=0.0).square()
    pair_hinge = torch.where(same_item, pair_hinge, torch.zeros_like(pair_hinge))
    pairs = n_inst if push_per_instance else (n_inst * (n_inst - 1)).clamp(min=1)
    push_seg = pair_hinge.sum(dim=1) / pairs

    reg_seg = _safe_norm(means.square().sum(dim=1)) / n_inst

    pull = _mean_over_items(pull_seg, item, batch)
    push = _mean_over_items(push_seg, item, batch)
    reg = _mean_over_items(reg_seg, item, batch)
    loss = alpha * pull + beta * push + gamma * reg
    return loss, {"pull": pull, "push": push, "reg": reg}


def foreground_loss(logits: torch.Tensor, instances: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of a foreground logit against ``instances > 0``.

    With ``mask`` (bool, same shape) only the pixels where it is True count: sparse
    annotations, where unpainted pixels are not known to be background.

    Parameters
    ----------
    logits : torch.Tensor
        Float tensor (B, *spatial): the foreground logit of every pixel.
    instances : torch.Tensor
        Integer tensor (B, *spatial); every non-zero id counts as foreground.

    Returns
    -------
    torch.Tensor
        Scalar mean BCE-with-logits over all pixels.

    Raises
    ------
    TypeError
        If an input is not a tensor or has the wrong kind of dtype.
    ShiftSegError
        If the shapes differ.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be a float tensor, got dtype {logits.dtype}")
    _check_labels(instances, "instances")
    if logits.shape != instances.shape:
        raise ShiftSegError(
            f"foreground logits {tuple(logits.shape)} and instances "
            f"{tuple(instances.shape)} must have the same shape (B, *spatial)"
        )
    target = (instances.to(logits.device) > 0).to(logits.dtype)
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    mask = mask.to(device=logits.device, dtype=logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_pixel * mask).sum() / mask.sum().clamp(min=1.0)
