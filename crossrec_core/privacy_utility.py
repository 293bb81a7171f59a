"""The privacy-utility curve: the target's NDCG@10 (sampled) against each silo's ε budget, from
several main-job run folders (e.g. ε = 1, 2, 4, 8 and no DP), with target-only, pooled non-private
and popularity as reference lines:

    python -m crossrec_core.privacy_utility runs/run-A runs/run-B ... [--out FOLDER]

Writes ``privacy_utility.json``, ``privacy_utility.md`` and ``privacy_utility.png`` into FOLDER
(default: a new ``privacy-utility-<time>`` folder under ``runs/``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossrec_core.config import PROJECT_ROOT
from crossrec_core.errors import CrossrecError
from crossrec_core.evaluation import NDCG
from crossrec_core.reporting import new_run_dir, write_atomic, write_json

GROUPS = ("cold-start", "all")
REFERENCES = ("popularity", "target-only", "pooled")
# settings that must agree across the folders for their points to sit on one curve
SAME = ("data-dir", "silos", "target", "seed", "cold-start-fraction", "merchants-per-category", "delta")


def _read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrossrecError(f"{folder} has no {name}; is it a finished run folder of the main job?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrossrecError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def collect(folders: Sequence[Path]) -> dict[str, Any]:
    """Points (one per federated run) and reference rows from the folders' ``comparison.json``."""
    if not folders:
        raise CrossrecError("give at least one run folder")
    points: list[dict[str, Any]] = []
    references: dict[str, dict[str, Any]] = {}
    first: dict[str, Any] | None = None
    if len(set(map(str, folders))) != len(folders):
        raise CrossrecError("a run folder is given twice: " + ", ".join(sorted({str(f) for f in folders if folders.count(f) > 1})))
    for folder in folders:
        if not folder.is_dir():
            raise CrossrecError(f"{folder}: {'is not a folder' if folder.exists() else 'no such folder'}")
        saved = _read(folder, "config.json")
        config = saved.get("run_config") if isinstance(saved, dict) else None
        comparison = _read(folder, "comparison.json")
        if not isinstance(config, dict):
            raise CrossrecError(f"{folder / 'config.json'} has no 'run_config' table; is it a main-job run folder?")
        if not isinstance(comparison, dict) or not isinstance(comparison.get("federated", {}), dict) \
                or not isinstance(comparison.get("rows", []), list):
            raise CrossrecError(f"{folder / 'comparison.json'} is not a comparison table of the main job")
        if first is None:
            first = {k: config.get(k) for k in SAME}
        else:
            differ = [f"{k}: {first[k]!r} vs {config.get(k)!r}" for k in SAME if config.get(k) != first[k]]
            if differ:
                raise CrossrecError(f"{folder} is not comparable with {folders[0]}: " + "; ".join(differ))
        try:
            for variant, result in sorted(comparison.get("federated", {}).items()):
                if not isinstance(result.get("dp"), bool):
                    raise ValueError(f"federated {variant!r}: dp must be true or false, got {result.get('dp')!r}")
                budget = None  # None: no DP
                spent: dict[str, Any] = {}
                if result["dp"]:
                    budget = _finite(config.get("epsilon-budget"), "config.json epsilon-budget", positive=True)
                    spent = result.get("epsilon_by_silo", {})
                    if not isinstance(spent, dict):
                        raise ValueError(f"federated {variant!r}: epsilon_by_silo must be a table")
                    spent = {silo: _finite(v, f"ε spent by {silo}") for silo, v in spent.items()}
                points.append({
                    "folder": str(folder),
                    "variant": variant,
                    "dp": result["dp"],
                    "epsilon_budget": budget,
                    "epsilon_spent_max": max(spent.values()) if spent else None,
                    "ndcg": {g: _finite(result["test"][g][NDCG], f"{variant} {g} {NDCG}") for g in GROUPS},
                    "n": {g: int(result["test"][g]["n"]) for g in GROUPS},
                })
            for row in comparison.get("rows", []):
                if row["method"] in REFERENCES and row["group"] in GROUPS:
                    ref = references.setdefault(row["method"], {"ndcg": {}, "folder": str(folder)})
                    if ref["folder"] == str(folder):
                        ref["ndcg"][row["group"]] = _finite(row["metrics"][NDCG], f"{row['method']} {row['group']} {NDCG}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"lacks an expected field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CrossrecError(f"{folder}: {detail}") from None
    if not points:
        raise CrossrecError("none of the folders holds a federated run")
    points.sort(key=lambda p: (not p["dp"], p["epsilon_budget"] or 0.0, p["folder"]))
    nodp = [p for p in points if not p["dp"]]
    pop = references.get("popularity", {}).get("ndcg", {})
    for p in points:  # share of the transfer gain over popularity that a DP run keeps
        p["gain_retained"] = {}
        for g in GROUPS:
            if p["dp"] and nodp and g in pop and nodp[0]["ndcg"][g] != pop[g]:
                p["gain_retained"][g] = (p["ndcg"][g] - pop[g]) / (nodp[0]["ndcg"][g] - pop[g])
    return {"points": points, "references": references, "settings": first}


def _finite(value: Any, what: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (> 0 with ``positive``); ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{what} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


def _eps(value: float | None) -> str:
    return "∞ (no DP)" if value is None else f"{value:g}"


def render_markdown(curve: dict[str, Any]) -> str:
    s = curve["settings"]
    lines = [
        "# Privacy-utility curve",
        "",
        f"Target {s.get('target')}, silos {s.get('silos')}, δ = {s.get('delta')} per silo; NDCG@10 on the "
        "target's test items against the same 99 sampled negatives for every row.",
        "",
        "| ε budget per silo | ε spent (max over silos) | NDCG@10 cold-start | NDCG@10 all | gain retained, cold-start | gain retained, all | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in curve["points"]:
        gain = [f"{p['gain_retained'][g]:.2f}" if g in p["gain_retained"] else "" for g in GROUPS]
        spent = p["epsilon_spent_max"]
        lines.append(
            f"| {_eps(p['epsilon_budget'])} | {'' if spent is None else f'{spent:.3f}'} "
            f"| {p['ndcg']['cold-start']:.4f} | {p['ndcg']['all']:.4f} | {gain[0]} | {gain[1]} | `{p['folder']}` ({p['variant']}) |"
        )
    if curve["references"]:
        lines += ["", "| reference (no DP) | NDCG@10 cold-start | NDCG@10 all |", "|---|---|---|"]
        for name in REFERENCES:
            ref = curve["references"].get(name)
            if ref:
                cells = [f"{ref['ndcg'][g]:.4f}" if g in ref["ndcg"] else "n/a" for g in GROUPS]
                lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += ["", "Gain retained = (NDCG@10 federated with DP - popularity) / (NDCG@10 federated without DP - "
              "popularity); empty where a folder set lacks the run without DP or popularity."]
    return "\n".join(lines) + "\n"


def render_plot(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp_points = [p for p in curve["points"] if p["dp"]]
    nodp = [p for p in curve["points"] if not p["dp"]]
    budgets = sorted({p["epsilon_budget"] for p in dp_points})
    # "no DP" sits one octave right of the largest budget, on the same log axis
    x_nodp = (budgets[-1] * 2.0) if budgets else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110, sharey=False)
    styles = {"popularity": ("grey", ":"), "target-only": ("tab:red", "--"), "pooled": ("tab:green", "-.")}
    for ax, group in zip(axes, GROUPS):
        xs = [p["epsilon_budget"] for p in dp_points]
        ys = [p["ndcg"][group] for p in dp_points]
        ax.plot(xs, ys, marker="o", color="tab:blue", label="federated with DP")
        if nodp:
            ax.plot([x_nodp] * len(nodp), [p["ndcg"][group] for p in nodp], marker="*", markersize=12,
                    linestyle="none", color="tab:blue", label="federated, no DP")
        for name in REFERENCES:
            ref = curve["references"].get(name, {}).get("ndcg", {})
            if group in ref:
                color, style = styles[name]
                ax.axhline(ref[group], color=color, linestyle=style, label=f"{name} (no DP)")
        ax.set_xscale("log", base=2)
        ticks = budgets + ([x_nodp] if nodp else [])
        ax.set_xticks(ticks, [f"{b:g}" for b in budgets] + (["no DP"] if nodp else []))
        ax.minorticks_off()
        ax.set_xlabel("ε budget per silo")
        ax.set_ylabel("NDCG@10 (sampled, test)")
        ax.set_title(f"target {curve['settings'].get('target')}: {group} shoppers")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_curve(out: Path, curve: dict[str, Any]) -> str:
    """Render the table and the plot, then write the three files (nothing is written if rendering fails)."""
    markdown = render_markdown(curve)
    out.mkdir(parents=True, exist_ok=True)
    plot = out / ".privacy_utility.new.png"
    try:
        render_plot(curve, plot)
        write_json(out / "privacy_utility.json", curve)
        write_atomic(out / "privacy_utility.md", markdown)
        plot.replace(out / "privacy_utility.png")
    finally:
        plot.unlink(missing_ok=True)
    return markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossrec_core.privacy_utility", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the table and plot (default: runs/privacy-utility-<time>)")
    args = parser.parse_args(argv)
    try:
        curve = collect(args.run_folders)
        out = args.out or new_run_dir(PROJECT_ROOT / "runs", "privacy-utility")
        markdown = write_curve(out, curve)
    except CrossrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the curve: {exc}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"written: {out / 'privacy_utility.md'}, privacy_utility.json, privacy_utility.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
