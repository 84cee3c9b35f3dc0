"""Resolution transfer on arrays: the paper's block-diagonal token-mixing initialisation (Appendix C).

A Mixer trained on an ``h x w`` token grid is moved to a ``(kh h) x (kw w)`` grid
(same patch, image ``kh x kw`` times larger, ``kh = kw = K`` in the paper). The
tokens split into ``G = kh kw`` groups, each a contiguous ``h x w`` tile of the
grid (one "sub-image"); each token-mixing MLP becomes ``G`` copies of the
original MLP, one per tile: ``W1' = diag(W1, ..., W1)`` of shape
``(G S, G D_S)``, ``W2'`` likewise, biases tiled. The model keeps the row-major
token order, so the block-diagonal matrices are permuted to match it: token
``t`` of the big grid gets the weights of its position inside its tile.

Pure NumPy on official-layout params; ``keras_mixer.convert_resolution`` applies it to a model.
"""

import math

import numpy as np

RULE = (
    "Resolution transfer keeps the patch size and needs the new token grid to be an "
    "integer multiple of the checkpoint's grid in both directions (image K times "
    "larger, paper Appendix C)"
)


def tiling_factors(source_grid, target_grid):
    """``(kh, kw)`` with ``target_grid == (kh * h, kw * w)``; a clear error otherwise."""
    (h, w), (big_h, big_w) = tuple(source_grid), tuple(target_grid)
    if big_h % h or big_w % w:
        raise ValueError(
            f"Cannot transfer token-mixing weights from a {h}x{w} token grid to a "
            f"{big_h}x{big_w} grid: factors {big_h / h:g} x {big_w / w:g} are not integers. "
            f"{RULE}."
        )
    return big_h // h, big_w // w


def square_grid(num_tokens):
    """The square token grid of a checkpoint with ``num_tokens`` tokens."""
    side = math.isqrt(int(num_tokens))
    if side * side != num_tokens:
        raise ValueError(
            f"The checkpoint's token-mixing MLP has {num_tokens} tokens, not a square "
            "grid, so its image size cannot be inferred; resolution transfer needs it."
        )
    return side, side


def token_groups(source_grid, target_grid):
    """For each token of the big grid (row-major): its tile index and its index inside the tile."""
    h, w = source_grid
    big_h, big_w = target_grid
    kh, kw = tiling_factors(source_grid, target_grid)
    rows, cols = np.divmod(np.arange(big_h * big_w), big_w)
    group = (rows // h) * kw + cols // w
    local = (rows % h) * w + cols % w
    return group, local, kh * kw


def block_diagonal_mlp(kernel_0, bias_0, kernel_1, bias_1, source_grid, target_grid):
    """One token-mixing MLP ``(S, D) / (D, S)`` expanded to ``(G S, G D) / (G D, G S)``."""
    group, local, groups = token_groups(source_grid, target_grid)
    tokens, hidden = kernel_0.shape
    if tokens != source_grid[0] * source_grid[1]:
        raise ValueError(
            f"Token-mixing kernel has {tokens} tokens but the source grid "
            f"{source_grid[0]}x{source_grid[1]} has {source_grid[0] * source_grid[1]}."
        )
    big = group.size
    rows = np.arange(big)
    new_kernel_0 = np.zeros((big, groups, hidden), kernel_0.dtype)
    new_kernel_0[rows, group] = kernel_0[local]
    new_kernel_1 = np.zeros((groups, hidden, big), kernel_1.dtype)
    new_kernel_1[group, :, rows] = kernel_1[:, local].T
    return (
        new_kernel_0.reshape(big, groups * hidden),
        np.tile(bias_0, groups),
        new_kernel_1.reshape(groups * hidden, big),
        bias_1[local],
    )


def expand_token_mixing(params, source_grid, target_grid):
    """Official-layout ``params`` with every token-mixing MLP made block-diagonal."""
    params = dict(params)
    prefixes = sorted({k.rsplit("/Dense_", 1)[0] for k in params if "/token_mixing/" in k})
    for prefix in prefixes:
        names = [f"{prefix}/Dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")]
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"Checkpoint is missing {', '.join(missing)}.")
        arrays = [np.asarray(params[n]) for n in names]
        params.update(zip(names, block_diagonal_mlp(*arrays, source_grid, target_grid)))
    return params
