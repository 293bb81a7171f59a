"""The privacy report of a run folder: ``privacy_report.json``, ``privacy_report.md`` and
``privacy_budget.png``. Re-rendered from a folder's JSON (every ε recomputed by the accountant):

    python -m crossrec_core.privacy_report RUN_FOLDER
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossrec_core.errors import CrossrecError, PrivacyError
from crossrec_core.privacy import PRIVACY_UNIT, PrivacyLedger, describe_entry, federation_figure, field_problem
from crossrec_core.reporting import write_atomic, write_json

REPORT_JSON = "privacy_report.json"
REPORT_MD = "privacy_report.md"
REPORT_PNG = "privacy_budget.png"
DESIGNS = ("dp-sgd", "segments")  # what the DP run released: shared-table updates, or segment values

ASSUMPTION = (
    "A shopper's interactions in each silo enter that silo's DP steps; silos draw their noise "
    "independently, so for a shopper present in several silos the privacy losses of all those silos' "
    "steps compose (adaptive composition over every round and phase). Merchants of one category do "
    "not share shoppers, so a shopper is in at most one merchant per category."
)

PROTECTED = [
    "Privacy unit: the shopper. Each silo's ε bounds what its releases (the shared-table updates it "
    "sends every round) reveal about all of one shopper's interactions in that silo together, not only "
    "a single click. Training uses at most `max interactions` of each shopper's most recent interactions "
    "(older ones are not used at all).",
    "What the server sees: each round, every silo's update of the shared shopper and item tables. With "
    "DP, noise is added to every row of the shopper table, so the update is covered by ε and does not "
    "reveal which rows (which shoppers) the silo has. Of the item table a silo sends the rows of its "
    "catalogue, every one noised: the server learns which item rows the silo has, i.e. its catalogue, "
    "which is treated as public (a merchant's product list) and is not covered by ε. With the bundled "
    "data a silo's catalogue is the set of items in its file. The silo-private head and item biases "
    "never leave the silo (they are trained with the same noisy steps).",
    "Not covered by ε: the metrics each silo sends with its update (training loss, validation "
    "NDCG@10 on its own shoppers, its number of shoppers and interactions, timings) and the target's "
    "test metrics at the end are exact aggregates over the silo's data. They are counts and means over "
    "thousands of shoppers, but a deployment that must protect them too should drop or noise them.",
    "DP randomness: with `secure-noise = true` (the default) a silo seeds each DP training call's "
    "Poisson sampling, negatives and Gaussian noise from fresh entropy of its own operating system "
    "(noise seed `secret`), so nobody, the server included, can reproduce or subtract the noise. The "
    "generator is PyTorch's, not a cryptographically secure one (Opacus' secure mode needs torchcsprng, "
    "which is not installed). A silo whose noise seed is `run seed` drew its randomness from the run's "
    "seed, which the server and every silo know: its ε does not hold against them (use it only for "
    "reproducible experiments).",
    "Keyed hashing: raw shopper and item ids never leave a silo; table rows come from an HMAC under a "
    "federation key that the silos hold and the server does not. The hashing hides ids from the server "
    "but is not a privacy guarantee against a party that holds the key; the DP guarantee does not rely on it.",
    "Evaluation data: each shopper's validation and test items are held out of training, and cold-start "
    "shoppers' target interactions are held out entirely; they are only used to compute the metrics above.",
    "Without DP (a `dp = false` run, and the centralized baselines), there is no differential-privacy "
    "guarantee at all (ε = ∞): updates can reveal individual shoppers' interactions.",
]


SEGMENTS_PROTECTED = [
    "Privacy unit: the shopper. Each source silo's ε bounds what its release (one segment value per row "
    "of the shared shopper table, and the Gaussian statistics that define the segments) reveals about "
    "all of one shopper's interactions in that silo together.",
    "What leaves a source silo: once, one value out of K per row of the shopper table, by K-ary "
    "randomized response (pure ε-DP per value; a shopper's data decides at most one value: the row of "
    "their first keyed hash). Rows no shopper of the silo hashes to hold the value \"none\", randomized "
    "the same way, so who shops at the silo is protected by the same ε. With K = 2 the value is "
    "membership alone and nothing else is computed from the data; with K > 2 the segments of members "
    "come from a Gaussian histogram of the silo's items and DP k-means (Gaussian steps in the "
    "accountant). Nothing of a source's model or items leaves it.",
    "The target silo: receives the releases and fits its segment model from its own shoppers inside the "
    "target silo. That model is not released and is not differentially private with respect to the "
    "target's own shoppers (like the popularity ranking the target computes anyway); the target's ledger "
    "shows no DP step. Its recommendations to a shopper use only the released values at that shopper's row.",
    "Membership is protected by ε and no more: with K = 2 at ε = 8 the true value of a row is kept with "
    "probability 0.9997, so anyone holding the federation key (every silo, the target included) reads who "
    "shops at a source almost exactly; at ε = 2 with probability 0.88, at ε = 1 0.73.",
    "Columns `max interactions` and `clipping norm` are DP-SGD terms (and the noise multiplier and sample "
    "rate mean nothing when a silo took no Gaussian step): with K > 2 a release's statistics use all of "
    "a shopper's training items as one unit vector (norm 1). Randomness of a release: numpy's PCG64 generator seeded "
    "from the silo's OS entropy (`secret`) or from the run seed (`run seed`); not a cryptographically "
    "secure generator.",
    "Not covered by ε: the metrics a source sends with its release (its number of shoppers, seconds) and "
    "the target's test metrics and fitting metrics (validation NDCG@10 per mixing weight), exact aggregates "
    "over the silo's data. The federation-wide figure counts only silos that released something (the "
    "target adds ε 0).",
]


def build_report(ledgers: Sequence[PrivacyLedger], *, dp: bool, delta: float, accountant: str,
                 source: str = "", extra_notes: Sequence[str] = (), design: str = "dp-sgd") -> dict[str, Any]:
    """The report's content; every ε in it comes from the accountant over the ledgers' steps."""
    ledgers = [ledger.recomputed() for ledger in ledgers]
    summaries = [ledger.summary() for ledger in ledgers]
    return {
        "dp": dp,
        "privacy_unit": PRIVACY_UNIT,
        "delta": delta,
        "accountant": accountant,
        "source": source,
        "summary": summaries,
        "budgets_respected": all(s["epsilon_spent"] <= s["epsilon_budget"] + 1e-9 for s in summaries),
        "federation": federation_figure(ledgers, delta, accountant) if dp and ledgers else None,
        "federation_assumption": ASSUMPTION,
        "refusals": [{"silo": ledger.silo, **r} for ledger in ledgers for r in ledger.refusals],
        "design": design,
        "notes": list(extra_notes) + (SEGMENTS_PROTECTED + [n for n in PROTECTED[2:] if not n.startswith(("DP randomness", "Not covered"))]
                                      if design == "segments" and dp else PROTECTED),
        "silos": [ledger.as_dict() for ledger in ledgers],
    }


def _fmt(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Privacy report", ""]
    if report.get("source"):
        lines += [f"Source: `{report['source']}`", ""]
    if not report["dp"]:
        lines += ["**DP is off for this run: there is no differential-privacy guarantee (ε = ∞).**", ""]
    else:
        lines += [
            f"Per silo, privacy unit **{report['privacy_unit']}**, accountant `{report['accountant']}`. "
            f"Every budget respected: **{'yes' if report['budgets_respected'] else 'NO'}**.",
            "",
            "| silo | unit | max interactions | noise multiplier | sample rate | Gaussian steps (taken / planned) "
            "| clipping norm | pure ε (randomized response) | δ | accountant | noise seed | ε spent | ε budget "
            "| ε remaining | refusals |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in report["summary"]:
            lines.append(
                f"| {s['silo']} | {s['privacy_unit']} | {s['max_interactions_per_shopper']} | {s['noise_multiplier']:.4f} "
                f"| {s['sample_rate']:.5f} | {s['steps']} / {s['planned_steps']} | {s['max_grad_norm']:g} "
                f"| {_fmt(s.get('pure_epsilon', 0.0))} | {s['delta']:g} "
                f"| {s['accountant']} | {s['noise_seed']} | {_fmt(s['epsilon_spent'])} | {s['epsilon_budget']:g} | {_fmt(s['epsilon_remaining'])} "
                f"| {s['refusals']} |"
            )
        fed = report.get("federation")
        if fed:
            lines += [
                "",
                "## Federation-wide: one shopper in several silos",
                "",
                f"Worst case, a shopper in every silo: **ε = {_fmt(fed['all_silos']['epsilon'])}** at δ = {fed['delta']:g} "
                f"({fed['all_silos']['method']}).",
                "",
                "| silos the shopper is in | worst-case ε | method | worst silos |",
                "|---|---|---|---|",
            ]
            for k, v in fed["by_silo_count"].items():
                lines.append(f"| {k} | {_fmt(v['epsilon'])} | {v['method']} | {', '.join(v['worst_silos'])} |")
            lines += ["", f"Assumption: {report['federation_assumption']}"]
        if report["refusals"]:
            lines += ["", "## Refused work", ""]
            for r in report["refusals"]:
                lines.append(f"- {r['silo']}: {r['phase']} {r['round']}, {r['steps']} steps would have reached "
                             f"ε = {r['projected_epsilon']:.3f}; refused (spent {r['spent']:.3f}).")
        lines += ["", "## Steps per silo", ""]
        for ledger in report["silos"]:
            steps = "; ".join(f"{describe_entry(e)}, ε → {_fmt(e['epsilon'])}" for e in ledger["entries"])
            lines.append(f"- {ledger['silo']}: {steps or 'no DP step taken'}")
    lines += ["", "## What is and is not protected", ""]
    lines += [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


PREFIXES = ("r", "ft", "rel")


def _label(entry: dict[str, Any]) -> str:
    return f"{ {'finetune': 'ft', 'release': 'rel'}.get(entry['phase'], 'r')}{entry['round']}"


def render_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    if not report["dp"] or not report["silos"]:
        ax.text(0.5, 0.5, "DP off: no ε to plot (ε = ∞)" if not report["dp"] else "no DP step taken",
                ha="center", va="center", fontsize=13)
        ax.set_axis_off()
    else:
        labels: list[str] = []
        for ledger in report["silos"]:
            for e in ledger["entries"]:
                label = _label(e)
                if label not in labels:
                    labels.append(label)
        labels.sort(key=lambda x: (PREFIXES.index(x.rstrip("0123456789")), int(x.lstrip("relft"))))
        position = {label: i + 1 for i, label in enumerate(labels)}
        cmap = plt.get_cmap("tab10" if len(report["silos"]) <= 10 else "tab20")
        for i, ledger in enumerate(report["silos"]):
            color = cmap(i % cmap.N)
            xs = [0] + [position[_label(e)] for e in ledger["entries"]]
            ys = [0.0] + [e["epsilon"] for e in ledger["entries"]]
            ax.plot(xs, ys, marker="o", color=color, label=f"{ledger['silo']} (budget {ledger['epsilon_budget']:g})")
            ax.axhline(ledger["epsilon_budget"], color=color, linestyle="--", linewidth=1, alpha=0.8)
        ax.set_xticks(range(len(labels) + 1), ["start"] + labels)
        ax.set_xlabel("DP mechanism run (r = federated round, ft = fine-tuning on the target, rel = release)")
        ax.set_ylabel(f"ε spent (δ = {report['delta']:g}, {report['accountant']} accountant)")
        ax.set_ylim(bottom=0)
        ax.set_title("Privacy budget spent per silo (dashed: budget)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_report(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the three files; everything is rendered first, so a failure leaves the old files as
    they were instead of a mix of old and new."""
    markdown = render_markdown(report)
    plot = folder / f".{REPORT_PNG}.new.png"
    try:
        render_plot(report, plot)
        write_json(folder / REPORT_JSON, report)
        write_atomic(folder / REPORT_MD, markdown)
        plot.replace(folder / REPORT_PNG)
    except OSError as exc:
        raise CrossrecError(f"cannot write the privacy report into {folder}: {exc}") from None
    finally:
        plot.unlink(missing_ok=True)
    return report


def write_ledger_report(folder: Path, ledgers: Sequence[PrivacyLedger], *, dp: bool, delta: float, accountant: str,
                        source: str = "", extra_notes: Sequence[str] = (), design: str = "dp-sgd") -> dict[str, Any]:
    return write_report(folder, build_report(ledgers, dp=dp, delta=delta, accountant=accountant, source=source,
                                             extra_notes=extra_notes, design=design))


def _design(data: dict[str, Any]) -> str:
    design = data.get("design", "dp-sgd")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    return design


def read_report(folder: Path) -> tuple[dict[str, Any], list[PrivacyLedger]]:
    """A folder's ``privacy_report.json`` and its ledgers; CrossrecError if missing or unreadable."""
    path = folder / REPORT_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        problems = []
        if not isinstance(data.get("dp"), bool):
            problems.append(f"dp must be true or false, got {data.get('dp')!r}")
        delta = data.get("delta")
        problems += [p for p in (field_problem("delta", delta, "delta"),
                                 field_problem("accountant", data.get("accountant"), "accountant")) if p]
        notes = data.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            problems.append("notes must be a list of text")
        try:
            _design(data)
        except ValueError as exc:
            problems.append(str(exc))
        if not isinstance(data.get("silos"), list):
            problems.append(f"silos must be a list of ledgers, got {type(data.get('silos')).__name__}")
        if problems:
            raise ValueError("; ".join(problems))
        ledgers = [PrivacyLedger.from_dict(s) for s in data["silos"]]
        names = [ledger.silo for ledger in ledgers]
        if len(set(names)) != len(names):
            problems.append(f"a silo's ledger appears twice: {sorted(names)}")
        if _design(data) != "segments" and any(ledger.pure_epsilon for ledger in ledgers):
            problems.append("randomized-response entries in a report whose design is not 'segments'")
        for ledger in ledgers:  # δ may differ per silo (a node's own budget); the accountant may not
            if ledger.accountant != data["accountant"]:
                problems.append(f"ledger of {ledger.silo!r} uses accountant {ledger.accountant} "
                                f"but the report says {data['accountant']}")
        if problems:
            raise ValueError("; ".join(problems))
        data["delta"] = float(delta)
    except FileNotFoundError:
        raise CrossrecError(f"{folder} has no {REPORT_JSON}; is it a crossrec run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CrossrecError(f"cannot read {path}: {exc}") from None
    return data, ledgers


def rerender(folder: Path) -> dict[str, Any]:
    """Rebuild a folder's report from its ``privacy_report.json`` ledgers, recomputing every ε."""
    data, ledgers = read_report(folder)
    protected = set(PROTECTED) | set(SEGMENTS_PROTECTED)
    extra = [n for n in data.get("notes", []) if n not in protected]
    return write_ledger_report(folder, ledgers, dp=data["dp"], delta=data["delta"], accountant=data["accountant"],
                               source=str(data.get("source", "")), extra_notes=extra, design=_design(data))


def write_run_report(top: Path, federated: dict[str, Path], *, delta: float, accountant: str,
                     baselines: bool) -> dict[str, Any]:
    """The report of a main-job run folder, from its federated runs' reports.

    The DP run's ledgers carry the figures; every run without DP is named as giving no guarantee.
    """
    notes: list[str] = []
    ledgers: list[PrivacyLedger] = []
    source, design = "", "dp-sgd"
    for name, folder in federated.items():
        try:
            data, found = read_report(folder)
        except CrossrecError as exc:
            notes.append(f"{name}: no privacy report could be read ({exc}); its steps are not in this report")
            continue
        if data["dp"]:
            ledgers, source, design = found, name, _design(data)
            notes.extend(n for n in data.get("notes", []) if n not in set(PROTECTED) | set(SEGMENTS_PROTECTED))
        else:
            notes.append(f"{name} ran without DP: its updates carry no differential-privacy guarantee (ε = ∞).")
    if baselines:
        notes.append("The centralized baselines (popularity, target-only, pooled) pool data in one place "
                     "without DP: they are reference points, not something to deploy under this report.")
    return write_ledger_report(top, ledgers, dp=bool(source), delta=delta, accountant=accountant,
                               source=source, extra_notes=notes, design=design)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossrec_core.privacy_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", type=Path)
    args = parser.parse_args(argv)
    try:
        report = rerender(args.run_folder)
    except (CrossrecError, PrivacyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    print(f"written: {args.run_folder / REPORT_JSON}, {REPORT_MD}, {REPORT_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
