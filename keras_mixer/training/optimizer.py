"""The recipe's AdamW: Keras' ``AdamW``, with a fused update step on the torch backend."""

import math

import keras
from keras import ops

from keras_mixer import compat
from keras_mixer.layers import PACKAGE

tf = torch = None
if keras.backend.backend() == "torch":
    import torch
elif keras.backend.backend() == "tensorflow":
    import tensorflow as tf
# On torch, Keras' own AdamW is its _foreach variant: derive from that one.
_KerasAdamW = compat.backend_optimizer_class(keras.optimizers.AdamW)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdamW(_KerasAdamW):
    """``keras.optimizers.AdamW`` (same math, arguments and variables), faster on torch and TF.

    On jax it is Keras' AdamW. On tensorflow each variable's Adam update is one
    ``ResourceApplyAdam`` kernel (the same formula as Keras', in one pass over the
    variable, its moments and gradient) instead of about ten elementwise kernels. On torch, instead of Keras' ten or so
    unfused ``_foreach`` passes with full-size temporaries, the update (weight decay
    included, as two groups for the decay mask) is one fused kernel call (:func:`compat.fused_adamw`)
    per group, given the learning rate, epsilon and decay that reproduce Keras' update
    (epsilon added to sqrt(v) before the bias correction, which Keras rounds in float32);
    global-norm clipping uses ``torch.nn.utils.get_total_norm``. AMSGrad and mixed
    dtypes fall back to Keras' code.

    Unlike Keras' AdamW, the names given to ``exclude_from_weight_decay(var_names=...)``
    are part of its config, so a saved and loaded optimizer keeps its decay mask.
    """

    def __init__(self, *args, weight_decay_exclusions=None, **kwargs):
        super().__init__(*args, **kwargs)
        if weight_decay_exclusions:
            self.exclude_from_weight_decay(var_names=weight_decay_exclusions)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        self._weight_decay_exclusions = sorted(set(var_names or ()))

    def get_config(self):
        config = super().get_config()
        if getattr(self, "_weight_decay_exclusions", None):
            config["weight_decay_exclusions"] = list(self._weight_decay_exclusions)
        return config

    def _fusable(self, variables):
        if torch is None or self.amsgrad or not variables or not compat.fused_adamw_available():
            return False
        first = variables[0].value
        return first.is_floating_point() and all(
            v.value.dtype == first.dtype and v.value.device == first.device for v in variables)

    def _apply_weight_decay(self, variables):
        if not self._fusable(variables):  # else done inside the fused update
            super()._apply_weight_decay(variables)

    def _clip_gradients(self, grads):
        if torch is None or self.clipnorm or not self.global_clipnorm or self.global_clipnorm <= 0:
            return super()._clip_gradients(grads)
        with torch.no_grad():
            present = [g for g in grads if g is not None]
            if not present:
                return grads
            norm = torch.nn.utils.get_total_norm(present, foreach=True).to(present[0].dtype)
            clip = self.global_clipnorm
            # Keras' clip_by_global_norm: a NaN scale when the norm is not finite.
            scale = clip * torch.minimum(1.0 / norm, norm.new_tensor(1.0 / clip)) + (norm - norm)
            scaled = iter(compat.foreach_mul(present, scale))
            return [next(scaled) if g is not None else None for g in grads]

    def update_step(self, gradient, variable, learning_rate):
        if (tf is None or self.amsgrad or tf.distribute.has_strategy()
                or isinstance(gradient, tf.IndexedSlices)):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = ops.cast(self.iterations + 1, dtype)

        def scalar(value):
            return ops.cast(value, dtype)

        # m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); var -= m alpha / (sqrt(v) + eps),
        # alpha = lr sqrt(1 - b2^t) / (1 - b1^t): Keras' update_step, as one kernel.
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=ops.power(scalar(self.beta_1), step),
            beta2_power=ops.power(scalar(self.beta_2), step),
            lr=scalar(learning_rate), beta1=scalar(self.beta_1), beta2=scalar(self.beta_2),
            epsilon=scalar(self.epsilon), grad=ops.cast(gradient, dtype))

    def _parallel_update_step(self, grads, variables, learning_rate):
        if not self._fusable(variables):
            return super()._parallel_update_step(grads, variables, learning_rate)
        index = [self._get_variable_index(v) for v in variables]
        device = variables[0].value.device
        # Keras' step size, computed as Keras does (float32: its 1 - beta ** step rounds).
        dtype = variables[0].dtype
        step = ops.cast(self.iterations + 1, dtype)
        alpha = float(ops.cast(learning_rate, dtype)
                      * ops.sqrt(1 - ops.power(ops.cast(self.beta_2, dtype), step))
                      / (1 - ops.power(ops.cast(self.beta_1, dtype), step)))
        # torch: param -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps) with its own bias
        # corrections c1, c2 (double), and decays by lr * weight_decay; Keras: param -=
        # alpha * m / (sqrt(v) + eps). These lr, eps and weight decay make them equal.
        step = float(step)
        c1, c2 = 1.0 - self.beta_1 ** step, math.sqrt(1.0 - self.beta_2 ** step)
        lr = alpha * c1 / c2
        eps = self.epsilon / c2
        decay = float(learning_rate) * self.weight_decay / lr if self.weight_decay and lr else 0.0
        steps = torch.tensor(step, dtype=torch.float32, device=device)
        groups = {True: [], False: []}
        for i, (g, v) in enumerate(zip(grads, variables)):
            groups[bool(self.weight_decay) and self._use_weight_decay(v)].append(i)
        for decayed, members in groups.items():
            if not members:
                continue
            compat.fused_adamw(
                [variables[i].value for i in members],
                [grads[i] for i in members],
                [self._momentums[index[i]].value for i in members],
                [self._velocities[index[i]].value for i in members],
                [],
                [steps] * len(members),
                lr=lr, beta1=self.beta_1, beta2=self.beta_2,
                weight_decay=decay if decayed else 0.0, eps=eps,
                amsgrad=False, maximize=False,
            )


def _handle(variable):
    """The resource handle of a Keras or tf variable."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
