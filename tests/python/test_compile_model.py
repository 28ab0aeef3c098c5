"""The whole GPT under torch.compile with the default backend (inductor): forward and backward equal
the eager model's, with gptcore's custom ops (attention, layer norm, fused linears, cross-entropy)
inside the graph."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

from gptcore.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cxx_or_skip():
    """Inductor's CPU kernels are C++ built with the machine's compiler ($CXX, else c++/g++/clang++):
    skip, saying so, without one. With one, any failure to compile the model is gptcore's."""
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(name and shutil.which(name) for name in names):
        pytest.skip("inductor cannot compile on this machine: no C++ compiler ($CXX, c++, g++ or clang++)")


def test_compiled_model_forward_and_backward_match_eager():
    cxx_or_skip()
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = GPT(GPTConfig(vocab_size=96, n_positions=32, n_layer=1, n_head=2, n_embd=64, dropout=0.0))
    eager.train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model)  # the default backend: inductor
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 96, (2, 24), generator=g), torch.randint(0, 96, (2, 24), generator=g)
    targets[0, :5] = -100
    got_logits, got_loss = compiled(idx, targets)
    got_loss.backward()
    want_logits, want_loss = eager(idx, targets)
    want_loss.backward()
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    assert want_loss.item() > 0 and any(q.grad.abs().max() > 0 for q in eager.parameters())
