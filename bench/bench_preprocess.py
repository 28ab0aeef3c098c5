"""`gptcore preprocess` throughput: MB/s of jsonl input with 1 and 2 workers, same tokenizer.

The input: about --mb MB of jsonl, wikitext-2 lines (valid + test) repeated when ../shared/data is
present, else the default corpus (the standard library's sources) repeated. The tokenizer: a
SentencePiece BPE of --vocab-size trained on the source text (cached beside the input). Both runs are
first checked to write byte-identical datasets; the table shows the best of --reps runs each.
SentencePiece already encodes a batch on all cores within one worker, so extra workers mainly spread
the Python side (reading, JSON, flattening) and gain little on a machine with few cores.

    python bench/bench_preprocess.py [--mb 30] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

from gptcore.data import default_corpus, preprocess, train_sentencepiece

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def source_texts() -> tuple[str, list[str], pathlib.Path | None]:
    """(description, documents, tokenizer model or None to train one)."""
    wikitext = [SHARED_DATA / "wikitext-2" / f"{split}.txt" for split in ("valid", "test")]
    if all(p.is_file() for p in wikitext):
        lines = [line for p in wikitext for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        return "wikitext-2 valid+test lines", lines, None
    jsonl, model = default_corpus()
    with open(jsonl, encoding="utf-8") as f:
        return "default corpus documents", [json.loads(line)["text"] for line in f], model


def build_input(work: pathlib.Path, mb: float, vocab_size: int) -> tuple[str, pathlib.Path, pathlib.Path]:
    what, docs, model = source_texts()
    if model is None:
        text = work / "source.txt"
        text.write_text("\n".join(docs) + "\n", encoding="utf-8")
        model = train_sentencepiece([text], work / "spm", vocab_size, input_sentence_size=200_000)
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs]
    once = sum(len(line.encode("utf-8")) for line in lines)
    repeats = max(1, round(mb * 1e6 / once))
    data = work / "input.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for _ in range(repeats):
            f.writelines(lines)
    return f"{what} x{repeats}", data, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=30.0, help="input size in MB")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        what, data, model = build_input(work, args.mb, args.vocab_size)
        size = data.stat().st_size
        rows, reference = [], None
        for workers in args.workers:
            best = None
            for rep in range(args.reps):
                prefix = work / f"w{workers}r{rep}"
                stats = preprocess([data], prefix, model, append_eod=True, workers=workers, progress=False)
                out = stats["outputs"]["text"]
                files = [pathlib.Path(f"{out}{s}").read_bytes() for s in (".bin", ".idx")]
                if reference is None:
                    reference = files
                elif files != reference:
                    raise SystemExit(f"workers={workers}: output differs from workers={args.workers[0]}")
                for s in (".bin", ".idx"):
                    os.remove(f"{out}{s}")
                best = stats if best is None or stats["seconds"] < best["seconds"] else best
            rows.append((workers, best))

    print(f"input: {what}, {size / 1e6:.1f} MB jsonl; tokenizer {model.name}; outputs identical across runs\n")
    print("| workers | docs | tokens | seconds | MB/s | docs/s | speedup |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = rows[0][1]["seconds"]
    for workers, s in rows:
        sec = s["seconds"]
        print(
            f"| {workers} | {s['documents']} | {s['tokens']} | {sec:.2f} | {size / 1e6 / sec:.1f}"
            f" | {s['documents'] / sec:.0f} | {base / sec:.2f}x |"
        )


if __name__ == "__main__":
    main()
