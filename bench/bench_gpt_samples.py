"""GPT sample-index build: gptcore's C++ builder against numpy implementations of the same algorithm.

The data: --documents documents of random lengths averaging --mean-length tokens (1e6 x 1000 =
1e9 tokens by default) read in one shuffled order, cut into samples of --seq-len + 1 tokens.
Baselines:
  numpy (vectorized)  cumulative document ends + searchsorted of the sample starts, on the full data
  Python loop         Megatron's per-document loop in plain Python, timed on the first --subset-tokens
                      tokens and scaled linearly to the full data (the loop is linear in documents +
                      samples; running it on 1e9 tokens would take minutes)
Both are first checked to produce exactly the C++ index (the loop on the subset).

    python bench/bench_gpt_samples.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gptcore import _C


def numpy_sample_index(lengths: np.ndarray, doc_index: np.ndarray, seq_len: int) -> np.ndarray:
    """Sample s starts at stream token s * seq_len: find its document by searching the cumulative ends."""
    stream_lengths = lengths[doc_index].astype(np.int64)
    ends = np.cumsum(stream_lengths)
    starts = np.arange((int(ends[-1]) - 1) // seq_len + 1, dtype=np.int64) * seq_len
    position = np.searchsorted(ends, starts, side="right")
    offset = starts - (ends[position] - stream_lengths[position])
    out = np.stack([position, offset], axis=1)
    out[0] = 0  # row 0 is (0, 0) even when the first document is empty, as in Megatron
    return out


def python_loop_sample_index(lengths: np.ndarray, doc_index: np.ndarray, seq_len: int) -> np.ndarray:
    """Megatron's loop: take seq_len + 1 tokens document by document from each sample's first token."""
    lengths, doc_index = lengths.tolist(), doc_index.tolist()
    total = sum(lengths[d] for d in doc_index)
    rows, position, offset = [(0, 0)], 0, 0
    for _ in range((total - 1) // seq_len):
        remaining = seq_len + 1
        while True:
            available = lengths[doc_index[position]] - offset
            if remaining <= available:
                offset += remaining - 1
                break
            remaining -= available
            position, offset = position + 1, 0
        rows.append((position, offset))
    return np.array(rows, dtype=np.int64)


def median_seconds(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--mean-length", type=int, default=1000)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--subset-tokens", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(0, 2 * args.mean_length + 1, args.documents).astype(np.int32)  # mean mean_length
    doc_index = rng.permutation(args.documents).astype(np.int32)
    tokens = int(lengths.sum(dtype=np.int64))
    stream = np.cumsum(lengths[doc_index], dtype=np.int64)
    subset = doc_index[: int(np.searchsorted(stream, args.subset_tokens)) + 1]
    subset_tokens = int(lengths[subset].sum(dtype=np.int64))

    def ours():
        return _C.gpt_sample_index(lengths, doc_index, args.seq_len)

    ref = ours()
    np.testing.assert_array_equal(numpy_sample_index(lengths, doc_index, args.seq_len), ref)
    np.testing.assert_array_equal(
        python_loop_sample_index(lengths, subset, args.seq_len), _C.gpt_sample_index(lengths, subset, args.seq_len)
    )
    print(
        f"{tokens / 1e9:.3f}e9 tokens in {args.documents} documents, seq_len {args.seq_len}, {len(ref) - 1} samples; "
        f"validated: C++ == numpy (full), C++ == Python loop ({subset_tokens / 1e6:.1f}e6-token subset)"
    )

    t_ours = median_seconds(ours, warmup=2, reps=args.reps)
    t_numpy = median_seconds(lambda: numpy_sample_index(lengths, doc_index, args.seq_len), 1, args.reps)
    t_loop_subset = median_seconds(lambda: python_loop_sample_index(lengths, subset, args.seq_len), 0, 3)
    t_loop = t_loop_subset * tokens / subset_tokens

    print()
    print("| implementation | time (ms) | C++ speedup |")
    print("| --- | ---: | ---: |")
    print(f"| gptcore C++ (full) | {t_ours * 1e3:.1f} | 1.0x |")
    print(f"| numpy vectorized (full) | {t_numpy * 1e3:.1f} | {t_numpy / t_ours:.1f}x |")
    print(
        f"| Python loop (measured {t_loop_subset * 1e3:.0f} ms on the subset, scaled x{tokens / subset_tokens:.0f}) "
        f"| {t_loop * 1e3:.0f} | {t_loop / t_ours:.0f}x |"
    )


if __name__ == "__main__":
    main()
