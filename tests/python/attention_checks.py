"""What the attention tests share: float64 reference gradients and a tolerance check."""

import torch


def float64_grads(fn, ins, dout):
    ref = [t.detach().double().requires_grad_() for t in ins]
    out = fn(*ref)
    return out.detach(), torch.autograd.grad(out, ref, dout.double())


def close(got, want, tol):
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
