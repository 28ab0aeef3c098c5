"""report.md and report.json from bench/gpu/check.sh's sections: each section's status, time and
numbers (every measurement with its baseline and ratio), and the log tail of every failure.

    python bench/gpu/report.py --work WORKDIR --out OUTDIR --mode full --dry-run 0 --elapsed 431
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TAIL_LINES = 40


def status_of(kind: str, rc: str, dry_run: bool) -> str:
    if rc == "out-of-time":
        return "not run (budget spent)"
    code = int(rc)
    if code in (124, 137):
        return "TIMEOUT"
    if dry_run and kind == "gpu":
        return "skipped (dry run; CPU smoke ok)" if code == 0 else "FAIL (dry run: CPU smoke failed)"
    return "pass" if code == 0 else "FAIL"


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests_summary(xml_path: Path) -> dict | None:
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for bad in [*case.findall("failure"), *case.findall("error")]:
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            failed.append(dict(test=f"{case.get('classname')}::{case.get('name')}", message=(message or [""])[0][:300]))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return dict(counts=counts, failed=failed)


def fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def table_head(*columns: str) -> list[str]:
    """A markdown table's header and separator rows."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def details_md(name: str, data) -> list[str]:
    """A few markdown lines with the section's numbers."""
    if not data:
        return []
    lines = []
    if name == "info":
        lines.append(f"`{json.dumps(data)}`")
    elif name == "tests":
        c = data["counts"]
        lines.append(f"{c['passed']} passed, {c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped")
        lines += [f"- FAILED `{f['test']}`: {f['message']}" for f in data["failed"][:40]]
    elif name == "hf_parity":
        lines += table_head("dtype", "gptcore rel err", "HF rel err (same dtype)", "bound", "argmax agreement", "ok")
        for r in data["results"]:
            if "error" in r:
                lines.append(f"| {r['dtype']} | error: {r['error'].splitlines()[0][:200]} | | | | False |")
                continue
            lines.append(
                f"| {r['dtype']} | {r['err_gptcore']:.2e} | {r['err_hf']:.2e} | {r['bound']:.2e}"
                f" | {r['argmax_agreement']:.4f} | {r['ok']} |"
            )
    elif name == "train_parity":
        lines.append(
            f"reference (CPU fp32): loss {data['reference_first']:.4f} -> {data['reference_last']:.4f}"
            f" in {data['steps']} steps"
        )
        lines += ["", *table_head("run", "mean abs dev", "max rel dev", "final rel dev", "bound", "ok")]
        for run, r in data["runs"].items():
            lines.append(
                f"| {run} | {r['mean_abs_dev']:.2e} | {r['max_rel_dev']:.2e} | {r['final_rel_dev']:.2e}"
                f" | {r['bound']} | {r['ok']} |"
            )
    elif name == "ops":
        lines += table_head("op", "shape", "gptcore ms", "rate", "baseline", "baseline ms", "speedup")
        for r in data["rows"]:
            if "error" in r:
                lines.append(f"| {r['op']} | {r['shape']} | | | {r['baseline']} | unavailable | |")
                continue
            rate = f"{r['rate']:.1f} {r['unit']}" if r.get("rate") else ""
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['ours_ms']:.3f} | {rate} | {r['baseline']} | {r['baseline_ms']:.3f}"
                f" | {r['speedup']:.2f}x |"
            )
        lines += [f"- FAILED {f['case']}: {f['error'].splitlines()[0][:300]}" for f in data["failures"]]
    elif name == "train_bench":
        lines.append(
            f"{data['preset']}, B {data['batch']} x T {data['seq_len']}, {data['dtype']}; baseline {data['baseline']};"
            f" validation: {data['validation']}"
        )
        lines += ["", *table_head("candidate", "ms/step", "tokens/s", "MFU")]
        for cand, c in data["candidates"].items():
            lines.append(f"| {cand} | {c['ms_per_step']:.1f} | {c['tokens_per_s']:,.0f} | {100 * c['mfu']:.1f}% |")
        lines.append(f"gptcore / baseline tokens/s: **{data['ratio']:.2f}x**")
    elif name == "profile":
        lines += [
            f"{data['total_ms_per_step']:.2f} ms per step",
            "",
            *table_head("kernel", "ms/step", "share", "calls"),
        ]
        for r in data["rows"]:
            lines.append(f"| {r['name']} | {r['ms_per_step']:.3f} | {100 * r['share']:.1f}% | {r['calls']} |")
    elif name.startswith("decode"):
        s = data["settings"]
        lines.append(
            f"{data['model']['preset']} shape, {s['dtype']}, P {s['prompt_len']}, N {s['new_tokens']},"
            f" HF attn {s['hf_attn_implementation']}"
        )
        for r in data["results"]:
            g = r["gptcore"]
            text = f"- batch {r['batch']}: gptcore {fmt(g['tokens_per_s'], ',.1f')} tok/s"
            text += f" (decode {fmt(g['decode_tokens_per_s'], ',.1f')})"
            if "HF" in r:
                h = r["HF"]
                text += f", HF {fmt(h['tokens_per_s'], ',.1f')} (decode {fmt(h['decode_tokens_per_s'], ',.1f')}):"
                text += f" **{fmt(r['speedup'], '.2f')}x** (decode {fmt(r['decode_speedup'], '.2f')}x)"
            if "bandwidth" in r:
                b = r["bandwidth"]
                text += (
                    f"; bound {b['bound_ms_per_token']:.3f} ms/token at {b['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s,"
                    f" gptcore {b['ms_per_token']:.3f} ms/token = **{b['percent_of_bound']:.1f}%** of the bound"
                )
            lines.append(text)
    return lines


def info_from_log(log: str) -> dict | None:
    for line in log.splitlines():
        if line.startswith("INFO "):
            return json.loads(line[5:])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--elapsed", type=int, default=0)
    args = parser.parse_args()
    work, out, dry = Path(args.work), Path(args.out), bool(args.dry_run)

    sections = []
    for line in (work / "sections.tsv").read_text().splitlines():
        name, kind, limit, rc, seconds = line.split("\t")
        log_path = work / f"{name}.log"
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        status = status_of(kind, rc, dry)
        if name == "info":
            data = info_from_log(log)
        elif name == "tests":
            data = tests_summary(work / "tests.xml")
        else:
            data = load_json(work / f"{name}.json")
        entry = dict(name=name, kind=kind, status=status, rc=rc, seconds=int(seconds), limit=int(limit), data=data)
        if not status.startswith(("pass", "skipped")):
            entry["log_tail"] = "\n".join(log.splitlines()[-TAIL_LINES:])
        sections.append(entry)

    info = load_json(work / "device.json") or {}
    device = (info.get("device") or {}).get("name", "no CUDA device")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ok = all(s["status"].startswith(("pass", "skipped")) for s in sections)
    report = dict(
        date=date, mode=args.mode, dry_run=dry, device=device, elapsed_seconds=args.elapsed, ok=ok, sections=sections
    )
    (out / "report.json").write_text(json.dumps(report, indent=1))

    md = [
        f"# gptcore GPU check ({args.mode}{', dry run' if dry else ''})",
        "",
        f"{date}; device: {device}; torch {info.get('torch')} (CUDA {info.get('cuda')}); {args.elapsed} s in all",
        "",
        *table_head("section", "status", "seconds", "limit"),
    ]
    md += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit']} |" for s in sections]
    for s in sections:
        md += ["", f"## {s['name']}: {s['status']}", ""]
        try:
            md += details_md(s["name"], s["data"])
        except (KeyError, TypeError, ValueError) as e:  # a malformed result must not cost the report
            md.append(f"(numbers not summarised: {type(e).__name__}: {e}; see report.json)")
        if "log_tail" in s:
            md += ["", "```", s["log_tail"], "```"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[: 6 + len(sections)]))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
