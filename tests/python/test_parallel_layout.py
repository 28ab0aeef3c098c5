"""ParallelLayout's rank order against a hand-written table, every layout error with its message,
the process groups build_groups makes (4 gloo processes) and the multi-process test helper."""

import pytest
import torch
import torch.distributed as dist

from gptcore.model import GPTConfig
from gptcore.parallel.layout import Coords, ParallelLayout, build_groups, check_layout
from gptcore.parallel.testing import DistributedError, run_distributed

# 8 = dp 2 x tp 2 x pp 2 in Megatron's order: tp fastest, then dp, then pp.
TABLE_8 = {
    0: (0, 0, 0),
    1: (0, 1, 0),
    2: (1, 0, 0),
    3: (1, 1, 0),
    4: (0, 0, 1),
    5: (0, 1, 1),
    6: (1, 0, 1),
    7: (1, 1, 1),
}


def test_rank_order_matches_megatron():
    layout = ParallelLayout(8, tp=2, pp=2)
    assert layout.dp == 2
    for rank, (dp, tp, pp) in TABLE_8.items():
        assert layout.coords(rank) == Coords(dp=dp, tp=tp, pp=pp)
        assert layout.rank(dp=dp, tp=tp, pp=pp) == rank
    assert layout.tp_groups() == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert layout.dp_groups() == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert layout.pp_groups() == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert layout.embedding_groups() == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_groups_partition_the_world():
    layout = ParallelLayout(24, tp=2, pp=3)
    assert layout.dp == 4
    for groups, size in ((layout.tp_groups(), 2), (layout.dp_groups(), 4), (layout.pp_groups(), 3)):
        assert all(len(g) == size for g in groups)
        assert sorted(r for g in groups for r in g) == list(range(24))
    # embedding: first and last stage of each pipeline; one stage: the rank alone
    assert layout.embedding_groups()[0] == (0, 16)
    assert ParallelLayout(4, tp=2).embedding_groups() == [(0,), (1,), (2,), (3,)]


def test_layout_errors():
    with pytest.raises(
        ValueError, match=r"world size 6 is not divisible by tp x pp = 4 x 1 = 4.*tp can be \[1, 2, 3, 6\]"
    ):
        ParallelLayout(6, tp=4)
    with pytest.raises(ValueError, match=r"tp x pp = 1 x 4 = 4.*pp=4 does not divide it either"):
        ParallelLayout(6, pp=4)
    with pytest.raises(ValueError, match="tp must be a positive integer, got 0"):
        ParallelLayout(4, tp=0)
    with pytest.raises(ValueError, match="rank 8 is outside a world of 8"):
        ParallelLayout(8, tp=2).coords(8)


def config(**overrides) -> GPTConfig:
    return GPTConfig.preset("tiny", use_gptcore_ops=False, **overrides)  # tiny: 2 layers, 2 heads, 512 vocab


@pytest.mark.parametrize(
    "layout, overrides, batches, message",
    [
        (
            ParallelLayout(4, tp=4),
            dict(n_head=2, n_embd=64),
            (8, 1),
            r"n_head \(2\) is not divisible by tp \(4\).*\[1, 2\]",
        ),
        (
            ParallelLayout(3, tp=3),
            dict(n_head=3, n_embd=96, vocab_size=500),
            (3, 1),
            r"padded vocabulary \(512 rows: vocab_size 500 .* pad_vocab_multiple 128\) is not divisible by tp \(3\)"
            r".*set pad_vocab_multiple to 384",
        ),
        (ParallelLayout(3, pp=3), {}, (3, 1), r"n_layer \(2\) is not divisible by pp \(3\): fewer layers than stages"),
        (
            ParallelLayout(3, pp=3),
            dict(n_layer=4),
            (3, 1),
            r"n_layer \(4\) is not divisible by pp \(3\): each.*\[1, 2, 4\]",
        ),
        (
            ParallelLayout(8, tp=2),
            {},
            (20, 2),
            r"global_batch_size \(20\) is not divisible by micro_batch_size x dp = 2 x 4 = 8.*use global_batch_size 16"
            r" or 24",
        ),
        (ParallelLayout(2), {}, (0, 1), "global_batch_size must be a positive integer, got 0"),
    ],
    ids=["heads", "vocab", "fewer_layers", "layers", "batch", "batch_size"],
)
def test_check_layout_errors(layout, overrides, batches, message):
    with pytest.raises(ValueError, match=message):
        check_layout(layout, config(**overrides), *batches)


def test_check_layout_lists_every_problem_and_returns_micro_batches():
    with pytest.raises(ValueError) as error:
        check_layout(ParallelLayout(12, tp=3, pp=4), config(), 12, 1)
    text = str(error.value)
    assert text.startswith("parallel layout (world 12 = dp 1 x tp 3 x pp 4):")
    assert all(s in text for s in ("n_head (2)", "padded vocabulary", "n_layer (2)"))
    layout = ParallelLayout(8, tp=2, pp=2)
    assert check_layout(layout, config(n_head=4, n_embd=64), global_batch_size=16, micro_batch_size=2) == 4


def groups_worker(rank: int, world: int) -> list[dict]:
    """For each layout: this rank's groups, and the sum of the global ranks over each group."""
    out = []
    layouts = (ParallelLayout(4, tp=2), ParallelLayout(4, pp=2), ParallelLayout(4, tp=2, pp=2), ParallelLayout(4, pp=4))
    for layout in layouts:
        groups = build_groups(layout)
        sums = {}
        for kind in ("tp", "dp", "pp", "embedding"):
            if getattr(groups, kind) is None:  # a middle pipeline stage: no embedding group
                sums[kind] = None
                continue
            total = torch.tensor([rank])
            dist.all_reduce(total, group=getattr(groups, kind))
            sums[kind] = int(total)
        ranks = {kind: getattr(groups, f"{kind}_ranks") for kind in ("tp", "dp", "pp", "embedding")}
        out.append({"layout": layout, "coords": groups.coords, "ranks": ranks, "sums": sums})
    with pytest.raises(ValueError, match="layout is for a world of 8 but torch.distributed has 4 ranks"):
        build_groups(ParallelLayout(8))
    return out


def test_build_groups_in_four_processes():
    for rank, results in enumerate(run_distributed(groups_worker, 4)):
        for result in results:
            layout = result["layout"]
            assert result["coords"] == layout.coords(rank)
            expected = {
                "tp": layout.tp_groups(),
                "dp": layout.dp_groups(),
                "pp": layout.pp_groups(),
                "embedding": layout.embedding_groups(),
            }
            for kind, all_groups in expected.items():
                mine = [g for g in all_groups if rank in g]
                if kind == "embedding" and not mine:  # pp 4: stages 1 and 2 hold no embedding
                    assert layout.pp > 2 and result["ranks"][kind] == () and result["sums"][kind] is None
                    continue
                assert result["ranks"][kind] == mine[0], (layout, kind)
                assert result["sums"][kind] == sum(mine[0]), (layout, kind)


def failing_worker(rank: int, world: int) -> int:
    if rank == 1:
        raise RuntimeError("rank one gives up")
    dist.barrier()  # rank 1 never arrives: this fails when it exits, or the helper stops it
    return rank


def echo_worker(rank: int, world: int, tag: str) -> tuple:
    return tag, rank, world


def test_run_distributed_returns_in_rank_order_and_reports_a_failing_rank():
    assert run_distributed(echo_worker, 2, "x") == [("x", 0, 2), ("x", 1, 2)]
    with pytest.raises(DistributedError, match=r"(?s)failing_worker failed on rank 1 of 2.*rank one gives up"):
        run_distributed(failing_worker, 2, timeout=60)
