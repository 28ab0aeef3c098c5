"""World 8 = tp2 x pp2 x dp2 on 8 gloo processes, with sequence parallelism: tensor-parallel
pipeline stages, 1F1B over two micro batches per data-parallel rank, DataParallel(average=False) reducing
once per step (no_sync), the tied embedding grads summed over the embedding group and the
sequence-parallel grads over the tp group; against the single-process GPT on the whole global
batch (loss, merged grads, weights after SGD steps). The helpers are test_parallel_composed's.
"""

import pytest
from test_parallel_composed import _reference, _train_tp_pp

from gptcore.parallel.layout import ParallelLayout, build_groups
from gptcore.parallel.testing import run_distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _world8_worker(rank: int, world_size: int, reference: list[dict]) -> None:
    groups = build_groups(ParallelLayout(world_size, tp=2, pp=2))
    assert (groups.layout.dp, groups.layout.tp, groups.layout.pp) == (2, 2, 2)
    _train_tp_pp(groups, reference, sequence_parallel=True)


def test_tp2_pp2_dp2_sequence_parallel_matches_single_process():
    run_distributed(_world8_worker, 8, _reference())
