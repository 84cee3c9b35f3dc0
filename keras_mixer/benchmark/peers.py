"""The same architecture from another library, timed beside ours: keras-cv's legacy
``MLPMixer`` (a Keras model, on every backend but torch) and timm's ``MlpMixer`` (eager
torch, inference only).
"""

import dataclasses


@dataclasses.dataclass
class Peer:
    """``build(dtype)`` returns the peer model (called under the row's Keras dtype policy).

    A Keras peer is compiled and stepped like our model; an eager torch peer
    (``inference_only``) is stepped by :meth:`eager_step`.
    """

    name: str
    build: object
    inference_only: bool = False

    def eager_step(self, model, images):
        """A zero-argument callable: one ``no_grad`` forward pass of a torch module."""
        import torch

        tensor = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        if next(model.parameters()).dtype == torch.bfloat16:
            tensor = tensor.to(torch.bfloat16)

        def step():
            with torch.no_grad():
                return model(tensor)

        return step


def find_peer(backend, config, image_size, num_classes):
    """``(Peer, None)`` for ``backend``, or ``(None, why there is none)``.

    ``config`` is a :class:`~keras_mixer.config.MixerConfig`.
    """
    if backend == "torch":
        return _timm_peer(config, image_size, num_classes)
    return _keras_cv_peer(config, image_size, num_classes)


def _timm_peer(config, image_size, num_classes):
    try:
        from timm.models.mlp_mixer import MlpMixer as TimmMixer
    except Exception as error:  # noqa: BLE001
        return None, f"timm not importable ({type(error).__name__}): no torch peer"

    def build(dtype):
        import torch

        model = TimmMixer(
            num_classes=num_classes, img_size=image_size, patch_size=config.patch_size,
            num_blocks=config.num_blocks, embed_dim=config.hidden_dim,
            mlp_ratio=(config.tokens_mlp_dim / config.hidden_dim,
                       config.channels_mlp_dim / config.hidden_dim),
        ).eval()
        return model.to(torch.bfloat16) if dtype == "bfloat16" else model

    return Peer("timm (eager)", build, inference_only=True), None


def _keras_cv_peer(config, image_size, num_classes):
    try:
        from keras_cv.src.models.legacy.mlp_mixer import MLPMixer as KerasCVMixer
    except Exception as error:  # noqa: BLE001
        return None, f"keras-cv legacy MLPMixer not importable ({type(error).__name__})"

    def build(dtype):
        return KerasCVMixer(
            input_shape=(image_size, image_size, 3), **dataclasses.asdict(config),
            include_rescaling=True, include_top=True, num_classes=num_classes,
            classifier_activation=None,
        )

    return Peer("keras-cv legacy MLPMixer", build), None
