"""An independent NumPy implementation of the official MLP-Mixer forward pass.

Written from the paper (Tolstikhin et al., 2021, Sec. 2 and Fig. 1) and the semantics
of ``vit_jax/models_mixer.py`` (google-research/vision_transformer), in float64, on a flat dict keyed like the official ``.npz`` files.
"""

import math

import numpy as np


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def mlp(x, params, prefix):
    h = gelu_tanh(x @ params[f"{prefix}/Dense_0/kernel"] + params[f"{prefix}/Dense_0/bias"])
    return h @ params[f"{prefix}/Dense_1/kernel"] + params[f"{prefix}/Dense_1/bias"]


def stem(images, kernel, bias):
    """Non-overlapping P x P patches times the HWIO kernel (a stride-P conv)."""
    n, h, w, c = images.shape
    p = kernel.shape[0]
    patches = images.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, (h // p) * (w // p), p * p * c)
    return patches @ kernel.reshape(p * p * c, -1) + bias


def num_blocks(params):
    return len({k.split("/")[0] for k in params if k.startswith("MixerBlock_")})


def forward(params, images, pre_logits=False):
    """Logits of the official Mixer for images already scaled to [-1, 1]."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = stem(np.asarray(images, np.float64), params["stem/kernel"], params["stem/bias"])
    for i in range(num_blocks(params)):
        b = f"MixerBlock_{i}"
        y = layer_norm(x, params[f"{b}/LayerNorm_0/scale"], params[f"{b}/LayerNorm_0/bias"])
        y = np.swapaxes(y, 1, 2)
        y = mlp(y, params, f"{b}/token_mixing")
        x = x + np.swapaxes(y, 1, 2)
        y = layer_norm(x, params[f"{b}/LayerNorm_1/scale"], params[f"{b}/LayerNorm_1/bias"])
        x = x + mlp(y, params, f"{b}/channel_mixing")
    x = layer_norm(x, params["pre_head_layer_norm/scale"], params["pre_head_layer_norm/bias"])
    x = x.mean(axis=1)
    if pre_logits:
        return x
    return x @ params["head/kernel"] + params["head/bias"]


def random_params(patch, channels_in, hidden, tokens, tokens_mlp, channels_mlp, depth,
                  num_classes, seed=0):
    """Random weights in the official layout (non-trivial LayerNorm and head)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / math.sqrt(shape[0] if len(shape) > 1 else 1)
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    params = {
        "stem/kernel": w(patch, patch, channels_in, hidden, scale=1.0 / math.sqrt(patch * patch * channels_in)),
        "stem/bias": w(hidden, scale=0.1),
        "pre_head_layer_norm/scale": 1 + w(hidden, scale=0.1),
        "pre_head_layer_norm/bias": w(hidden, scale=0.1),
        "head/kernel": w(hidden, num_classes),
        "head/bias": w(num_classes, scale=0.1),
    }
    for i in range(depth):
        b = f"MixerBlock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            params[f"{b}/{ln}/scale"] = 1 + w(hidden, scale=0.1)
            params[f"{b}/{ln}/bias"] = w(hidden, scale=0.1)
        for name, width, inner in (("token_mixing", tokens, tokens_mlp),
                                   ("channel_mixing", hidden, channels_mlp)):
            params[f"{b}/{name}/Dense_0/kernel"] = w(width, inner)
            params[f"{b}/{name}/Dense_0/bias"] = w(inner, scale=0.1)
            params[f"{b}/{name}/Dense_1/kernel"] = w(inner, width)
            params[f"{b}/{name}/Dense_1/bias"] = w(width, scale=0.1)
    return params


def assign_official(model, params):
    """Copy an official-layout dict into a keras_mixer model, attribute by attribute."""
    stem_layer = model.get_layer("stem")
    stem_layer.proj.kernel.assign(params["stem/kernel"])
    stem_layer.proj.bias.assign(params["stem/bias"])
    for i in range(num_blocks(params)):
        block = model.get_layer(f"mixer_block_{i}")
        b = f"MixerBlock_{i}"
        for norm, ln in ((block.norm_0, "LayerNorm_0"), (block.norm_1, "LayerNorm_1")):
            norm.gamma.assign(params[f"{b}/{ln}/scale"])
            norm.beta.assign(params[f"{b}/{ln}/bias"])
        for mlp_layer, name in ((block.token_mixing, "token_mixing"),
                                (block.channel_mixing, "channel_mixing")):
            for j, dense in enumerate((mlp_layer.dense_0, mlp_layer.dense_1)):
                dense.kernel.assign(params[f"{b}/{name}/Dense_{j}/kernel"])
                dense.bias.assign(params[f"{b}/{name}/Dense_{j}/bias"])
    norm = model.get_layer("pre_head_layer_norm")
    norm.gamma.assign(params["pre_head_layer_norm/scale"])
    norm.beta.assign(params["pre_head_layer_norm/bias"])
    if any(layer.name == "head" for layer in model.layers):
        head = model.get_layer("head")
        head.kernel.assign(params["head/kernel"])
        head.bias.assign(params["head/bias"])


def rel_error(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12))


def timm_forward(state, images, approximate="tanh"):
    """timm's MlpMixer forward written with torch.nn.functional on a timm state dict (float64).

    ``images`` are NHWC and already normalised; ``approximate="none"`` is timm's own
    (exact erf) GELU, ``"tanh"`` the official one.
    """
    import pytest

    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    s = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.items()}
    x = torch.as_tensor(images, dtype=torch.float64).permute(0, 3, 1, 2)  # NCHW
    patch = s["stem.proj.weight"].shape[-1]
    x = F.conv2d(x, s["stem.proj.weight"], s["stem.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)  # (batch, tokens, channels)

    def norm(t, name):
        return F.layer_norm(t, t.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps=1e-6)

    def mlp(t, name):
        t = F.gelu(F.linear(t, s[name + ".fc1.weight"], s[name + ".fc1.bias"]), approximate=approximate)
        return F.linear(t, s[name + ".fc2.weight"], s[name + ".fc2.bias"])

    i = 0
    while f"blocks.{i}.norm1.weight" in s:
        b = f"blocks.{i}"
        x = x + mlp(norm(x, b + ".norm1").transpose(1, 2), b + ".mlp_tokens").transpose(1, 2)
        x = x + mlp(norm(x, b + ".norm2"), b + ".mlp_channels")
        i += 1
    x = norm(x, "norm").mean(dim=1)
    return F.linear(x, s["head.weight"], s["head.bias"]).numpy()
