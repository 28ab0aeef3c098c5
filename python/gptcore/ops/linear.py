"""Linear layer with fused bias / tanh-GELU / residual epilogues as torch custom ops over gptcore._C."""

from __future__ import annotations

import torch

from gptcore import _C
from gptcore.ops._views import stream, view

_ACTIVATIONS = {None: _C.ACTIVATION_NONE, "gelu": _C.ACTIVATION_GELU_TANH}


def _out_shape(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], weight.shape[0])


def _workspace(nbytes: int, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


@torch.library.custom_op("gptcore::linear_fwd", mutates_args=())
def linear_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: int,
    save_pre_act: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y, pre_act) for y = act(x W^T + bias) + residual; pre_act (the GELU input) is
    an empty tensor unless the activation is GELU and save_pre_act is set."""
    y = x.new_empty(_out_shape(x, weight))
    keep = activation == _C.ACTIVATION_GELU_TANH and save_pre_act
    pre_act = torch.empty_like(y) if keep else x.new_empty(0)
    args = (
        view(x, "x"),
        view(weight, "weight"),
        view(bias, "bias"),
        view(residual, "residual"),
        view(y, "y"),
        view(pre_act, "pre_act") if keep else None,
        activation,
    )
    workspace = _workspace(_C.linear_fwd_workspace_size(*args), x)
    _C.linear_fwd(*args, workspace.data_ptr(), workspace.numel(), stream(x))
    return y, pre_act


@linear_fwd.register_fake
def _(x, weight, bias, residual, activation, save_pre_act):
    y = x.new_empty(_out_shape(x, weight))
    keep = activation == _C.ACTIVATION_GELU_TANH and save_pre_act
    return y, torch.empty_like(y) if keep else x.new_empty(0)


@torch.library.custom_op("gptcore::linear_bwd", mutates_args=())
def linear_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    pre_act: torch.Tensor | None,
    activation: int,
    need_dx: bool,
    need_dweight: bool,
    need_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias); a gradient not asked for is an empty tensor."""
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dweight = torch.empty_like(weight) if need_dweight else x.new_empty(0)
    dbias = weight.new_empty(weight.shape[0]) if need_dbias else x.new_empty(0)
    args = (
        view(dy, "dy"),
        view(x, "x"),
        view(weight, "weight"),
        view(pre_act, "pre_act"),
        view(dx, "dx") if need_dx else None,
        view(dweight, "dweight") if need_dweight else None,
        view(dbias, "dbias") if need_dbias else None,
        activation,
    )
    workspace = _workspace(_C.linear_bwd_workspace_size(*args), x)
    _C.linear_bwd(*args, workspace.data_ptr(), workspace.numel(), stream(x))
    return dx, dweight, dbias


@linear_bwd.register_fake
def _(dy, x, weight, pre_act, activation, need_dx, need_dweight, need_dbias):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    dweight = torch.empty_like(weight) if need_dweight else x.new_empty(0)
    dbias = weight.new_empty(weight.shape[0]) if need_dbias else x.new_empty(0)
    return dx, dweight, dbias


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, activation, _ = inputs
    _, pre_act = output
    ctx.activation = activation
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(x, weight, pre_act)


def _backward(ctx, dy, _dpre_act):
    x, weight, pre_act = ctx.saved_tensors
    gelu = ctx.activation == _C.ACTIVATION_GELU_TANH
    if gelu and pre_act.numel() != x.shape[:-1].numel() * weight.shape[0]:
        raise RuntimeError("gptcore::linear_fwd ran with save_pre_act=False; its GELU has no backward")
    need_dx, need_dweight, need_dbias = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    dy = dy.contiguous()
    dx, dweight, dbias = linear_bwd(
        dy, x, weight, pre_act if gelu else None, ctx.activation, need_dx, need_dweight, need_dbias
    )
    return (
        dx if need_dx else None,
        dweight if need_dweight else None,
        dbias if need_dbias else None,
        dy if ctx.has_residual else None,
        None,
        None,
    )


linear_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """act(x @ weight.T + bias) + residual, weight [out_features, in_features] as in F.linear.

    activation: None, or "gelu" for the tanh GELU (F.gelu(approximate="tanh")). A residual
    cannot be combined with "gelu".
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'gelu' (tanh GELU), got {activation!r}")
    code = _ACTIVATIONS[activation]
    save = code == _C.ACTIVATION_GELU_TANH and torch.is_grad_enabled()
    save = save and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return linear_fwd(x, weight, bias, residual, code, save)[0]
