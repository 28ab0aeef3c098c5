"""AdamW whose whole step (every param group) is one fused gptcore call."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch

from gptcore import _C
from gptcore.ops._views import stream

_DTYPE_CODES = {torch.float32: _C.dtype.float32, torch.float16: _C.dtype.float16, torch.bfloat16: _C.dtype.bfloat16}
_FLOAT32_STATE = ("exp_avg", "exp_avg_sq", "master")


class AdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction) in one fused kernel.

    Moments are float32. A float16/bfloat16 param gets a float32 master copy in its state
    ('master'): the update runs on the master and the param receives the rounded value.
    Each param group may set its own lr and weight_decay; betas and eps are shared.

    A param with a ``main_grad`` attribute (a float32 gradient accumulation buffer, Megatron's
    convention for half params) is updated from it instead of ``.grad``.

    ``step(grad_scale=S)`` treats the grads as scaled by S (loss scaling): they are divided
    by S as they are read, and if any is inf/nan nothing changes (params, moments, step
    counts) and ``found_inf`` is True afterwards.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        amsgrad: bool = False,
        maximize: bool = False,
    ):
        if amsgrad:
            raise ValueError("gptcore.optim.AdamW does not support amsgrad=True; use torch.optim.AdamW for AMSGrad")
        if maximize:
            raise ValueError("gptcore.optim.AdamW does not support maximize=True; negate the loss instead")
        self.found_inf = False
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            _check_group(self.param_groups[-1], self.param_groups[0], len(self.param_groups) - 1)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @torch.no_grad()
    def step(self, closure=None, grad_scale: float | torch.Tensor | None = None):
        """One AdamW step over every param with a grad; grad_scale: the loss scale the grads carry."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        entries, grads, steps = [], [], []
        device = None
        for group in self.param_groups:
            for p in group["params"]:
                if param_grad(p) is None:
                    continue
                device = p.device if device is None else device
                if p.device != device:
                    raise ValueError(
                        f"gptcore.optim.AdamW needs all params on one device; found {device} and {p.device}"
                    )
                entries.append(self._entry(p, group, grads))
                steps.append(self.state[p]["step"])
        self.found_inf = False
        if not entries:
            return loss
        found_inf = None
        inv_grad_scale = 1.0
        if grad_scale is not None:
            inv_grad_scale = 1.0 / float(grad_scale)
            found_inf = torch.zeros(1, dtype=torch.int32, device=device)
        beta1, beta2 = self.param_groups[0]["betas"]
        _C.adamw_step(
            entries,
            _C.CUDA if device.type == "cuda" else _C.CPU,
            device.index or 0,
            float(beta1),
            float(beta2),
            float(self.param_groups[0]["eps"]),
            inv_grad_scale,
            0 if found_inf is None else found_inf.data_ptr(),
            stream(grads[0]),
        )
        if found_inf is not None and bool(found_inf.item()):  # the one host sync, as GradScaler's
            self.found_inf = True
            return loss
        torch._foreach_add_(steps, 1.0)
        return loss

    def _entry(self, p: torch.Tensor, group: dict[str, Any], grads: list[torch.Tensor]) -> tuple:
        """The C call's tuple for p, creating its state on first use; grads keeps the grad it passes alive."""
        grad = param_grad(p)
        if grad.is_sparse:
            raise ValueError("gptcore.optim.AdamW does not support sparse gradients")
        if p.dtype not in _DTYPE_CODES or grad.dtype not in _DTYPE_CODES:
            raise TypeError(
                f"gptcore.optim.AdamW updates float32/float16/bfloat16 params and grads; got a {p.dtype} param "
                f"with a {grad.dtype} grad"
            )
        if not p.is_contiguous():
            raise ValueError(f"gptcore.optim.AdamW updates params in place and needs them contiguous (shape {p.shape})")
        if grad.device != p.device:
            raise ValueError(f"a grad is on {grad.device} but its param is on {p.device}")
        grad = grad.contiguous()
        grads.append(grad)
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
            if p.dtype != torch.float32:
                state["master"] = p.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        master = state.get("master")
        return (
            p.data_ptr(),
            grad.data_ptr(),
            0 if master is None else master.data_ptr(),
            state["exp_avg"].data_ptr(),
            state["exp_avg_sq"].data_ptr(),
            p.numel(),
            _DTYPE_CODES[p.dtype],
            _DTYPE_CODES[grad.dtype],
            float(group["lr"]),
            float(group["weight_decay"]),
            int(state["step"].item()) + 1,
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to each param's dtype, which would round the float32
        # moments and masters of half params; take them again from the saved values.
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        for p, saved_id in zip(params, saved_ids, strict=True):
            saved = state_dict["state"].get(saved_id, {})
            for key in _FLOAT32_STATE:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32, copy=True)


def param_grad(p: torch.Tensor) -> torch.Tensor | None:
    """The gradient AdamW reads for p: its float32 `main_grad` when it has one, else `.grad`."""
    main_grad = getattr(p, "main_grad", None)
    return p.grad if main_grad is None else main_grad


def _check_group(group: dict[str, Any], first: dict[str, Any], index: int) -> None:
    """Hyperparameters in range (torch's messages), betas/eps shared, supported dtypes."""
    lr, eps, weight_decay, betas = group["lr"], group["eps"], group["weight_decay"], tuple(group["betas"])
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"Invalid betas: {betas}; each must be in [0, 1)")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    for key, value, shared in (("betas", betas, tuple(first["betas"])), ("eps", eps, first["eps"])):
        if value != shared:
            raise ValueError(
                f"gptcore.optim.AdamW runs all param groups in one call, so they share '{key}': "
                f"group {index} has {value} but group 0 has {shared}"
            )
    for i, p in enumerate(group["params"]):
        if p.dtype not in _DTYPE_CODES:
            raise TypeError(
                f"gptcore.optim.AdamW updates float32, float16 and bfloat16 params; param {i} of group {index} "
                f"is {p.dtype}"
            )
