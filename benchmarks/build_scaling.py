"""Build scaling: seconds per stage, peak RSS and artifact size against customers, side by side with
the original approach (dense pandas pivot -> svds -> sklearn kNN) run under a memory cap.

    .venv/bin/python benchmarks/build_scaling.py --sizes 10000 100000 1000000 --data-root /tmp/scale

Data is generated under --data-root when missing (``similarity_api generate --seed 42``); artifacts
go to --data-root too, never into the repository. Each build is its own process, measured from the
outside (``wait4`` peak RSS, like ``/usr/bin/time -v``). Writes benchmarks/results/build_scaling.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procmon

ROOT = Path(__file__).resolve().parents[1]
# The interpreter running this script runs the children too (any env with the bench group).
PY = sys.executable
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("ingest", "features", "embeddings", "index", "quality")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure_data(root: Path, n: int) -> Path:
    data = root / f"data_{n}"
    if not (data / "user_course_views.csv").is_file():
        print(f"generating {n:,} customers into {data} ...", flush=True)
        run = procmon.run(
            [
                PY,
                "-m",
                "similarity_api",
                "generate",
                "--users",
                str(n),
                "--seed",
                "42",
                "--out",
                str(data),
            ],
            log=root / f"generate_{n}.log",
        )
        if not run.ok:
            raise SystemExit(f"generation failed: {run.stderr_tail}")
    return data


def build(
    root: Path, data: Path, n: int, *, fast: bool, ceiling: int, timeout: float
) -> dict[str, Any]:
    label = "fast" if fast else "deterministic"
    artifacts = root / f"art_{n}_{label}"
    shutil.rmtree(artifacts, ignore_errors=True)
    command = [PY, "-m", "similarity_api", "build", "--data-dir", str(data)]
    command += ["--artifacts-dir", str(artifacts), "--no-progress"]
    if fast:
        command.append("--fast")
    run = procmon.run(
        command, rss_ceiling=ceiling, timeout=timeout, log=root / f"build_{n}_{label}.log"
    )
    row: dict[str, Any] = {
        "customers": n,
        "mode": label,
        "ok": run.ok,
        "wall_seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "peak_rss_bytes": run.peak_rss_bytes,
        "killed_for_rss": run.killed_for_rss,
        "timed_out": run.timed_out,
        "command": " ".join(command),
    }
    if run.ok:
        version = (artifacts / "current").resolve()
        manifest = json.loads((version / "manifest.json").read_text())
        row |= {
            "timings": manifest["timings"],
            "counts": manifest["counts"],
            "quality": manifest["quality"],
            "artifact_bytes": _dir_bytes(version),
            "index_bytes": (version / "index.ann").stat().st_size,
            "artifact_path": str(version),
        }
    else:
        row["error"] = run.stderr_tail[-2000:]
    return row


def original(data: Path, n: int, *, cap: int, timeout: float, root: Path) -> dict[str, Any]:
    command = [PY, str(ROOT / "benchmarks" / "original_approach.py"), "--data-dir", str(data)]
    run = procmon.run(
        command, address_space_limit=cap, timeout=timeout, log=root / f"original_{n}.log"
    )
    stages = []
    for line in run.stdout_tail.splitlines():
        try:
            stages.append(json.loads(line))
        except ValueError:
            continue
    by_stage = {s["stage"]: s for s in stages}
    failed = next((s for s in stages if "error" in s), None)
    error = None
    if failed:
        error = f"{failed['error']} in {failed['stage']}"
    elif run.timed_out:
        error = f"timed out after {timeout:.0f} s"
    elif run.returncode != 0:
        error = f"exit {run.returncode}: {run.stderr_tail.strip().splitlines()[-1:]}"
    return {
        "customers": n,
        "ok": error is None,
        "error": error,
        "wall_seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
        "peak_rss_bytes": run.peak_rss_bytes,
        "address_space_cap_bytes": cap,
        "stages": by_stage,
        "command": " ".join(command),
    }


def _cpu(r: dict[str, Any]) -> str:
    return f"{r['cpu_seconds']:.0f}" if "cpu_seconds" in r else "-"


def _gb(b: float) -> str:
    return f"{b / procmon.GIB:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Build scaling",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['memory_gib']} GiB; load average at start "
        f"{result['machine']['load_avg_at_start']} (shared machine: other work was running).",
        f"Command: `{result['command']}`",
        f"Run at {result['started']}.",
        "",
        "## This pipeline (seconds per stage from the manifest; peak RSS of the build process)",
        "",
        "| customers | mode | ingest | features | embeddings | index | quality | total s | wall s "
        "| CPU s | peak RSS GiB | artifact MiB | index.ann MiB | recall@10 Annoy | served |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["builds"]:
        if not r["ok"]:
            why = "RSS ceiling" if r["killed_for_rss"] else "timeout" if r["timed_out"] else "error"
            lines.append(f"| {r['customers']:,} | {r['mode']} | failed: {why} |" + " |" * 13)
            continue
        t = r["timings"]
        q = r["quality"]
        lines.append(
            f"| {r['customers']:,} | {r['mode']} | "
            + " | ".join(f"{t.get(s, 0):.1f}" for s in STAGES)
            + f" | {t['total']:.1f} | {r['wall_seconds']:.1f} | {_cpu(r)} "
            f"| {_gb(r['peak_rss_bytes'])} "
            f"| {r['artifact_bytes'] / 2**20:.0f} | {r['index_bytes'] / 2**20:.0f} "
            f"| {q.get('recall_at_10_annoy', float('nan')):.4f} "
            f"| {q.get('recall_at_10_served', float('nan')):.4f} |"
        )
    cap = result["original"][0]["address_space_cap_bytes"] if result["original"] else 0
    lines += [
        "",
        f"## Original approach (pandas pivot -> dense demeaned matrix -> svds k=50 -> sklearn "
        f"cosine kNN of 1,000 customers), address space capped at {_gb(cap)} GiB",
        "",
        "| customers | outcome | read | pivot | svds | kNN fit+1k queries | total s | dense matrix GiB "
        "| peak RSS GiB | ours (deterministic) / original, time | memory |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # The ratio uses the last deterministic build of each size (after any fix, when merged).
    ours = {
        r["customers"]: r
        for r in result["builds"]
        if r["mode"].startswith("deterministic") and r["ok"]
    }
    for o in result["original"]:
        s = o["stages"]

        def sec(name: str, s: dict[str, Any] = s) -> str:
            return f"{s[name]['seconds']:.1f}" if name in s and "error" not in s[name] else "-"

        knn = (
            f"{s['knn_fit']['seconds'] + s['knn_query']['seconds']:.1f}"
            if "knn_query" in s and "error" not in s["knn_query"]
            else "-"
        )
        dense = (
            _gb(s["pivot"]["dense_bytes"]) if "pivot" in s and "dense_bytes" in s["pivot"] else "-"
        )
        outcome = "ok" if o["ok"] else o["error"]
        total = f"{s['total']['seconds']:.1f}" if "total" in s else "-"
        ratio_t = ratio_m = "-"
        mine = ours.get(o["customers"])
        if o["ok"] and mine:
            ratio_t = f"{mine['timings']['total'] / s['total']['seconds']:.2f}"
            ratio_m = f"{mine['peak_rss_bytes'] / o['peak_rss_bytes']:.2f}"
        lines.append(
            f"| {o['customers']:,} | {outcome} | {sec('read')} | {sec('pivot')} | {sec('svds')} "
            f"| {knn} | {total} | {dense} | {_gb(o['peak_rss_bytes'])} | {ratio_t} | {ratio_m} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    modes = dict.fromkeys(r["mode"] for r in result["builds"])
    styles = ["o-", "s--", "D:", "v-."]
    for mode, style in zip(modes, styles, strict=False):
        rows = [r for r in result["builds"] if r["mode"] == mode and r["ok"]]
        if not rows:
            continue
        xs = [r["customers"] for r in rows]
        ax_t.plot(xs, [r["timings"]["total"] for r in rows], style, label=f"this build ({mode})")
        ax_m.plot(
            xs,
            [r["peak_rss_bytes"] / procmon.GIB for r in rows],
            style,
            label=f"this build ({mode})",
        )
    done = [o for o in result["original"] if o["ok"]]
    if done:
        xs = [o["customers"] for o in done]
        ax_t.plot(
            xs, [o["stages"]["total"]["seconds"] for o in done], "^-", color="C3", label="original"
        )
        ax_m.plot(
            xs,
            [o["peak_rss_bytes"] / procmon.GIB for o in done],
            "^-",
            color="C3",
            label="original",
        )
    for o in result["original"]:
        if not o["ok"]:
            ax_m.plot(
                [o["customers"]],
                [o["address_space_cap_bytes"] / procmon.GIB],
                "x",
                color="C3",
                ms=12,
            )
            ax_m.annotate(
                f"original: {o['error']}",
                (o["customers"], o["address_space_cap_bytes"] / procmon.GIB),
                textcoords="offset points",
                xytext=(-160, 8),
                fontsize=8,
                color="C3",
            )
    ax_t.axhline(180, color="grey", lw=0.8, ls=":", label="target 180 s")
    ax_m.axhline(6, color="grey", lw=0.8, ls=":", label="target 6 GB")
    for ax, title, unit in ((ax_t, "build time", "seconds"), (ax_m, "peak RSS", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("customers")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Build scaling on {result['machine']['cores']} cores ({result['machine']['cpu']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(specs: list[str], out: Path) -> int:
    merged: dict[str, Any] = {"builds": [], "original": [], "runs": []}
    originals: dict[int, dict[str, Any]] = {}
    for spec in specs:
        label, _, path = spec.partition("=")
        run = json.loads(Path(path).read_text())
        merged.setdefault("machine", run["machine"])
        merged["runs"].append(
            {
                "label": label,
                "command": run["command"],
                "started": run["started"],
                "load_avg_at_start": run["machine"]["load_avg_at_start"],
            }
        )
        for b in run["builds"]:
            merged["builds"].append(b | {"mode": f"{b['mode']} {label}".strip()})
        for o in run["original"]:
            if o["ok"] or o["stages"] or o["customers"] not in originals:
                originals[o["customers"]] = o
    merged["original"] = [originals[n] for n in sorted(originals)]
    merged["command"] = " ; ".join(r["command"] for r in merged["runs"])
    merged["started"] = " ; ".join(f"{r['label']}: {r['started']}" for r in merged["runs"])
    merged["machine"]["load_avg_at_start"] = [r["load_avg_at_start"] for r in merged["runs"]]
    out.with_suffix(".json").write_text(json.dumps(merged, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(merged))
    plot(merged, out.with_suffix(".png"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--data-root", type=Path, default=Path("/tmp/scale"))
    p.add_argument(
        "--fast",
        choices=["none", "largest", "all"],
        default="largest",
        help="also build with --fast (multi-threaded Annoy and BLAS) [largest]",
    )
    p.add_argument(
        "--original-max",
        type=int,
        default=1_000_000,
        help="largest size to try the original approach on [1000000]",
    )
    p.add_argument(
        "--original-cap-gb",
        type=float,
        default=10.0,
        help="address-space cap (RLIMIT_AS) of the original approach, GiB [10]",
    )
    p.add_argument(
        "--rss-ceiling-gb",
        type=float,
        default=16.0,
        help="kill a build of ours above this RSS, GiB [16]",
    )
    p.add_argument("--timeout", type=float, default=1200.0, help="per process, seconds [1200]")
    p.add_argument("--keep-artifacts", action="store_true", help="keep the built artifacts")
    p.add_argument("--out", type=Path, default=RESULTS / "build_scaling")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="LABEL=JSON",
        help="run nothing: merge recorded results (each build's mode gets the label as a suffix, "
        "a later original-approach row replaces an earlier one of the same size) into --out",
    )
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    args.data_root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": procmon.machine(),
        "command": "benchmarks/build_scaling.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "builds": [],
        "original": [],
    }
    ceiling = int(args.rss_ceiling_gb * procmon.GIB)
    for n in sorted(args.sizes):
        data = ensure_data(args.data_root, n)
        modes = [False]
        if args.fast == "all" or (args.fast == "largest" and n == max(args.sizes)):
            modes.append(True)
        for fast in modes:
            row = build(args.data_root, data, n, fast=fast, ceiling=ceiling, timeout=args.timeout)
            result["builds"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
            if not args.keep_artifacts and row.get("artifact_path"):
                shutil.rmtree(Path(row["artifact_path"]).parent, ignore_errors=True)
        if n <= args.original_max:
            o = original(
                data,
                n,
                cap=int(args.original_cap_gb * procmon.GIB),
                timeout=args.timeout,
                root=args.data_root,
            )
            result["original"].append(o)
            print(json.dumps(o), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    plot(result, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
