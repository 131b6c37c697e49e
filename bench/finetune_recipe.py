"""Evidence for fine-tuning's small-folder rule (``fastclr.finetune.recipe``): one pretrained
network fine-tuned, and the same network trained from scratch, on a few labels, under candidate
rules for the batch, the learning rate and the length of the run.

    python bench/finetune_recipe.py --pretrained RUN --data FOLDER/train

``--data`` should NOT be the folder the semi-supervised suite reports on with its own ``val/``:
the rule is chosen on the 10% of each class that ``FOLDER/train`` holds out, so the suite's
numbers on ``FOLDER/val`` are not tuned to (``bench/quality_semi.py`` reports those). Every
candidate is a set of ``fastclr finetune`` flags; the candidate ``rule`` gives none (what the
command decides by itself). ``--inits probe`` adds ``fastclr linear-eval``'s probe
(:func:`fastclr.fit_linear_probe`) on the frozen encoder, fitted on the same labelled images
(the ``labelled.txt`` of that label setting's fine-tuning run: run it after one). Appends one
record per run to ``--record`` (JSON lines: the pretraining, the exact command, top-1, top-5,
seconds, images/s) and prints the table; ``--report`` writes ``finetune-recipe.md`` from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RECORD = RESULTS / "finetune-recipe.jsonl"
LABELS = ("4-per-class", "10%")
#: a row of the report: labels, candidate, crop area, optimiser, fine-tuning seed
Row = tuple[str, str, str, str, int]

#: name → extra ``fastclr finetune`` flags; ``{n}``: the labelled images, ``{lin}``: the linear
#: rule's rate for a batch of all of them, ``{steps}``: the paper's steps at that fraction,
#: ``{epochs}``: the paper's epochs at that fraction.
CANDIDATES: dict[str, list[str]] = {
    # the rule before this evidence: the whole subset in one batch (at most 256), the paper's
    # linear rule 0.05 x batch/256, raised to the paper's number of steps
    "paper-linear": ["--batch-size", "{n}", "--lr", "{lin}", "--epochs", "{steps}"],
    # batch 16: linear rule 0.05 x 16/256, square-root rule 0.0125 x sqrt(16) (equal to the
    # paper's 0.8 at its batch 4096), three times that; the paper's steps, or its epochs only
    "b16-linear": ["--batch-size", "16", "--lr", "0.003125"],
    "b16-sqrt": ["--batch-size", "16", "--lr", "0.05"],
    "b16-3sqrt": ["--batch-size", "16", "--lr", "0.15"],
    "b16-sqrt-paper-epochs": ["--batch-size", "16", "--lr", "0.05", "--epochs", "{epochs}"],
    # SimCLRv2: the classifier on the projection head's first layer
    "b16-sqrt-head1": ["--batch-size", "16", "--lr", "0.05", "--from-head-layer", "1"],
    # what fastclr finetune decides by itself (the rule these runs chose)
    "rule": [],
    # milder crops than pretraining's 0.3 (28 px)
    "crop-0.8": ["--crop-min", "0.8"],
    # no crop at all (with no flips for grayscale images: no augmentation)
    "crop-none": ["--crop-min", "1"],
    # the paper's Nesterov SGD on every parameter (the rule's optimiser before LARS)
    "sgd": ["--optimizer", "sgd"],
    # LARS on the weights at other rates than the rule's 1
    "lars-0.3": ["--lars-lr", "0.3"],
    "lars-3": ["--lars-lr", "3"],
}
#: Crop areas of the runs recorded before records named theirs: the preset's for 28-px views
#: (``small-grey``, 0.3 to 1), the only crop fine-tuning had then (0.8 to 1 is the default now).
PRESET_CROP = "0.3-1"
#: The optimiser of the runs recorded before records named theirs: the paper's SGD, the only
#: one fine-tuning had then.
PAPER_OPTIMIZER = "sgd"
INITS = ("pretrained", "scratch", "probe")
#: The pretraining of the records written before they named theirs (the first table)
FIRST_PRETRAINING = "resnet18 width 0.25, cifar stem, 28 px, 40 epochs"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def last_row(csv_path: Path) -> dict[str, float]:
    import csv

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()}


def run_one(argv: list[str], out: Path) -> dict[str, Any]:
    """``python -m fastclr finetune ARGV --out OUT``; its last epoch's scores and its cost."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fastclr", "finetune", *argv, "--out", str(out), "--overwrite"]
    t = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        rc = subprocess.call(
            [*cmd, "--no-progress"], stdout=log, stderr=subprocess.STDOUT, env=_env()
        )
    secs = time.perf_counter() - t
    if rc != 0:
        tail = (out.parent / f"{out.name}.log").read_text().splitlines()[-10:]
        raise SystemExit(f"failed ({rc}): {shlex.join(cmd)}\n" + "\n".join(tail))
    row = last_row(out / "epochs.csv")
    import csv

    with (out / "epochs.csv").open(newline="") as f:
        ips = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    from fastclr.checkpoint import load_checkpoint

    plan = load_checkpoint(out)["plan"]
    crop, opt = plan["crop"]["value"], plan["optimizer"]["value"]
    return {
        "command": "python -m fastclr finetune " + shlex.join(argv),
        "crop": "-".join(f"{v:g}" for v in crop),
        "optimizer": opt["name"] + (f" {opt['lars_lr']:g}" if opt["lars_lr"] else ""),
        "top1": row["top1"],
        "top5": row["top5"],
        "epochs": int(row["epoch"]) + 1,
        "seconds": secs,
        "images_per_s": sorted(ips)[len(ips) // 2],
    }


def pretraining(run: str | Path, note: str | None = None) -> str:
    """The pretraining a run folder holds, in a few words (what its checkpoint records), and
    ``note`` (what tells apart two runs of one description)."""
    from fastclr.downstream import load_encoder

    info = load_encoder(run).info
    text = (
        f"{info.arch} width {info.width:g}, {info.stem} stem, {info.image_size} px, "
        f"{info.epoch} epochs"
    )
    return f"{text} ({note})" if note else text


def probe_one(pre: str, data: str, subset_run: Path) -> dict[str, Any]:
    """``linear-eval``'s probe on the frozen encoder of ``pre``, fitted on the images that
    ``subset_run/labelled.txt`` lists, scored on the images ``data`` holds out."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality_semi import linear_probe

    t = time.perf_counter()
    top1 = linear_probe(Path(pre), Path(data), subset_run)
    return {
        "command": f"linear_probe({pre}, {data}, {subset_run}/labelled.txt)",
        "top1": top1,
        "seconds": time.perf_counter() - t,
    }


def _fields(labels: str, n_train: int, n_classes: int) -> dict[str, Any]:
    """The values the candidates' flags name (see :data:`CANDIDATES`)."""
    import math

    from fastclr.finetune.recipe import paper_epochs, paper_steps

    if "per-class" in labels:
        n = int(labels.split("-")[0]) * n_classes
    else:
        n = math.floor(float(labels.rstrip("%")) / 100 * n_train + 0.5)
    fraction = n / n_train
    b = min(256, n)
    return {
        "n": b,
        "lin": f"{0.05 * b / 256:.6g}",
        "steps": math.ceil(paper_steps(fraction) / (n // b)),
        "epochs": math.ceil(paper_epochs(fraction)),
    }


def report(record: Path) -> str:
    """finetune-recipe.md: per pretraining, one row per label setting and candidate, the two
    starts side by side (the last record of each) and the linear probe on the same labels."""
    tables: dict[str, dict[Row, dict[str, dict[str, Any]]]] = {}
    for line in record.read_text().splitlines():
        r = json.loads(line)
        rows = tables.setdefault(r.get("pretraining", FIRST_PRETRAINING), {})
        opt = r.get("optimizer", PAPER_OPTIMIZER)
        key = (r["labels"], r["candidate"], r.get("crop", PRESET_CROP), opt, int(r["seed"]))
        rows.setdefault(key, {})[r["init"]] = r
    out = [
        "# Fine-tuning's small-folder rule: the evidence",
        "",
        "`python bench/finetune_recipe.py` (module docstring; the runs' exact commands are in "
        "`finetune-recipe.jsonl`). One pretrained network per table (`fastclr pretrain --data "
        "FOLDER/train --epochs 40 --seed 0`, at `--image-size 28 --width 0.25` for the first, "
        "at the default width and the view-size rule's 28 px for the second; FOLDER = the digits "
        "exported by `bench/quality.py`; the third: the first's command run again on later "
        "code), fine-tuned and trained from scratch with the fine-tuning seed shown (the labelled "
        "images are its draw; the pretraining's is 0); the "
        "linear probe is `fastclr linear-eval`'s, fitted on the same labelled images. "
        "*optimizer*: the paper's Nesterov SGD (`sgd`, the only one before the third table) or "
        "LARS on the weights at the rate named. *crop area*: the fine-tuning crops' area range "
        "(the runs recorded here without `--crop-min` had pretraining's, 0.3 to 1 at 28 px; "
        "since the rows above were measured the default under 32 px is 0.8 to 1). Top-1 on "
        "the 143 images `FOLDER/train` holds out (10% of each class; one image is 0.70 "
        "points), never on the suite's `FOLDER/val`.",
    ]
    for pre, rows in tables.items():
        out += ["", f"## Pretrained: {pre}", "", *_table(rows)]
    return "\n".join([*out, "", *DECISION]) + "\n"


def _table(rows: dict[Row, dict[str, dict[str, Any]]]) -> list[str]:
    probes = {(k[0], k[4]): by["probe"] for k, by in rows.items() if "probe" in by}
    out = [
        "| labels | seed | candidate | optimizer | crop area | flags | steps | fine-tuned "
        "| from scratch | difference | linear probe |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (labels, name, crop, opt, seed), by in rows.items():
        pre, sc = by.get("pretrained"), by.get("scratch")
        if pre is None and sc is None:
            continue  # the probe's own record: shown in its column
        any_run = pre or sc
        assert any_run is not None
        flags = any_run["command"].split(f"--seed {seed}", 1)[-1]
        flags = flags.replace("--from-scratch", "").strip()
        cells = [f"{100 * r['top1']:.2f}" if r else "-" for r in (pre, sc)]
        diff = f"{100 * (pre['top1'] - sc['top1']):+.2f}" if pre and sc else "-"
        probe = probes.get((labels, seed))
        probe_cell = f"{100 * probe['top1']:.2f}" if probe else "-"
        shown = f"`{flags}`" if flags else "(none)"
        out.append(
            f"| {labels} | {seed} | {name} | {opt} | {crop} | {shown} | {_steps(any_run)} "
            f"| {' | '.join(cells)} | {diff} | {probe_cell} |"
        )
    return out


#: What the table decided (fastclr.finetune.recipe states the same rule).
DECISION = [
    "**Decided** (`fastclr/finetune/recipe.py`), the same rule for both starts:",
    "",
    "- *learning rate*: the square-root rule 0.0125 × √batch (0.05 at 16; the paper's 0.8 at "
    "its batch 4096). The linear rule at small batches (0.003 at 16) leaves the baseline far "
    "behind (63.6% and 94.4%), which would make fine-tuning look better than it is; three "
    "times the square-root rate helps the baseline at 4 a class and costs the pretrained "
    "network 5.6 and 1.4 points. `paper-linear` was the rule before this table (the whole "
    "subset in one batch, 0.05 × batch/256).",
    "- *length*: the paper's number of steps (not only its epochs): equal within noise for the "
    "pretrained network, 2.1 and 1.4 points better for the baseline.",
    "- *batch*: the largest power of two ≤ 256 with ≥ 8 steps an epoch, at least 16 (16 here); "
    "not compared with other batches at the same rate.",
    "- *head layer*: the classifier on the head's first layer (SimCLRv2) did not help here "
    "(89.51 and 97.90 against 89.51 and 98.60); the default stays the encoder's output.",
    "- *crop* (measured later, on the second table's pretraining, run again with the same "
    "command and seed: the rule's fine-tuning and the probe came out identical, 85.31% and "
    "92.31%): crops of at least 0.8 of the image instead of pretraining's 0.3 gave +4.2 points "
    "to the pretrained network at 4 labels a class (89.51%; from scratch 80.42%, 0.7 below, so "
    "the difference grew from +4.2 to +9.1) and -2.1 at 10% (96.50%, now 0.7 below the probe; "
    "from scratch unchanged at 95.10%); no crop at all 84.62% / 62.24% (the baseline "
    "starved). Better with 40 labelled images, worse with 130, one seed each: the default "
    "stayed pretraining's crop (the paper's) until the suite was run with LARS (below).",
    "- *optimiser* (measured later, on the third table's pretraining: the first table's "
    "command run again on the code of that day, whose network differs from the first's): LARS "
    "on the conv and linear weights at 1 (each layer moves by at most 0.1% of its norm a step "
    "before momentum; classifier, biases and BatchNorm by SGD at the rule's rate) gave 92.31% "
    "fine-tuned at 4 labels a class against the paper's SGD's 88.11%, and 99.30% against "
    "97.20% at 10%; from scratch 83.22% / 96.50% against 81.82% / 97.90% (the baseline 1.4 "
    "points better at 4 a class, 1.4 worse at 10%). LARS at 0.3 and at 3 were below LARS at 1 "
    "with both label counts. The rule now fine-tunes with LARS at 1 (`--optimizer sgd` is "
    "the paper's); one seed, chosen among three rates on these held-out images.",
    "- *optimiser, two more seeds* (fine-tuning seeds 1 and 2 of the third table: other "
    "labelled images, the same pretraining, its command run again and checked by the rule's "
    "seed-0 run coming out at 92.31% again): the first seed's margin did not hold. Mean ± σ "
    "over the three seeds, fine-tuned / from scratch, 4 labels a class: LARS 1 89.98 ± 3.45 / "
    "84.15 ± 2.25, SGD 89.98 ± 1.76 / 86.48 ± 4.10, LARS 0.3 91.38 ± 2.65 / 84.15 ± 2.65, "
    "LARS 3 89.04 ± 2.02 / 85.55 ± 1.07, probe 91.14 ± 2.83; 10%: LARS 1 98.60 ± 1.21 / 97.44 "
    "± 1.07, SGD 97.90 ± 0.70 / 96.74 ± 3.30, LARS 0.3 97.44 ± 1.61 / 96.04 ± 1.76, LARS 3 "
    "98.14 ± 0.81 / 97.67 ± 0.81, probe 97.20 ± 2.42. No rate and neither optimiser stands out "
    "beyond the spread between seeds on 143 images; LARS at 1 stays the rule (the highest mean "
    "at 10%, tied at 4 a class, and 3.9 points above SGD on the semi-supervised suite's three "
    "pretrainings).",
    "- *crop, with LARS* (the same three seeds and pretraining): crops of at least 0.8 raised "
    "both starts. 4 labels a class: fine-tuned 95.10 ± 1.21 against the rule's 89.98 ± 3.45 "
    "(above the probe's 91.14 ± 2.83), from scratch 90.68 ± 2.25 against 84.15 ± 2.25, so the "
    "difference fell from +5.83 to +4.43; 10%: 98.83 ± 0.81 / 98.60 ± 0.70 against 98.60 ± "
    "1.21 / 97.44 ± 1.07. At the default width with LARS (second table, seed 0, its "
    "pretraining run again: the probe came out at 92.31% and 97.20% as before) they did too: "
    "95.10 / 92.31 at 4 a class (rule 89.51 / 86.71), 99.30 / 99.30 at 10% (rule 98.60 / "
    "95.10), fine-tuning 2.8 and 2.1 points above the probe; with SGD they had cost 2.1 points "
    "at 10%. Then the semi-supervised suite (its own validation images, three pretrainings, "
    "`bench/results/quality-semi.md`) agreed: 91.36 ± 1.28 fine-tuned at 4 a class against "
    "88.58 ± 2.55, and 98.70 ± 0.16 at 10% against 96.56 ± 0.90 (above the probe's 97.21); from "
    "scratch 90.62 and 97.59 against 82.64 and 95.82. Adopted for views under 32 px (the "
    "`small` presets): better networks at both label counts, though pretraining's lead over "
    "the baseline at 4 a class falls from +5.9 to +0.7.",
    "",
    "**At the default width** (the second table, added after the rule was decided and not "
    "used to change it; one seed): the rule's fine-tuning is 4.2 points above the same network "
    "from scratch at 4 labels a class and 3.5 at 10% of them. The linear probe on the frozen "
    "encoder is 7.0 points above fine-tuning at 4 a class and 1.4 below it at 10%: with a "
    "handful of labels a class the probe (`fastclr.fit_linear_probe`) was the better "
    "classifier, with 10% fine-tuning was. The head's first layer cost 1.4 points at 4 a class. "
    "With LARS (the rule's optimiser since the third table, measured on this pretraining after "
    "it was chosen, the pretraining run again with its command and seed: the probe came out "
    "identical, 92.31% and 97.20%): 89.51% fine-tuned at 4 labels a class (+4.2 over SGD) and "
    "86.71% from scratch (+5.6), so the difference fell to +2.8; at 10% 98.60% / 95.10%, the "
    "same as SGD's.",
]


def _steps(run: dict[str, Any]) -> str:
    """Optimiser steps of a recorded run, from its flags (batch) and epochs."""
    argv = run["command"].split()
    n = {"4-per-class": 40, "10%": 130}.get(run["labels"])
    if n is None:
        return "?"
    if "--batch-size" in argv:
        batch = int(argv[argv.index("--batch-size") + 1])
    else:  # the rule's batch (FOLDER/train: 1,295 training images)
        from fastclr.finetune.recipe import finetune_recipe

        batch = int(finetune_recipe(n, 1295).batch_size.value)
    return str(run["epochs"] * (n // batch))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pretrained", help="the pretraining run")
    p.add_argument("--data", help="a labelled folder without the suite's val/")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--labels", nargs="+", default=list(LABELS))
    p.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=INITS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=Path("runs/finetune-recipe"))
    p.add_argument("--record", type=Path, default=RECORD)
    p.add_argument("--report", action="store_true", help="only write finetune-recipe.md")
    p.add_argument(
        "--pretraining-note",
        help="added to the pretraining's description: what tells this pretraining apart from "
        "another of the same description (its table is its own)",
    )
    args = p.parse_args(argv)
    if args.report:
        text = report(args.record)
        args.record.with_suffix(".md").write_text(text)
        print(text)
        return 0
    if args.pretrained is None or args.data is None:
        p.error("--pretrained and --data are required (except with --report)")
    from fastclr.data import plan_data

    data = plan_data(args.data)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    pre = pretraining(args.pretrained, args.pretraining_note)
    for labels in args.labels:
        values = _fields(labels, data.n_train, len(data.classes))
        tag = labels.replace("%", "pct")
        for name in args.candidates:
            flags = [f.format(**values) for f in CANDIDATES[name]]
            for init in [i for i in args.inits if i != "probe"]:
                base = ["--checkpoint", args.pretrained, "--data", args.data, "--labels", labels]
                base += ["--seed", str(args.seed), *flags]
                base += ["--from-scratch"] if init == "scratch" else []
                out = args.runs / f"{tag}-{name}-{init}-s{args.seed}"
                _record(args, pre, labels, name, init, run_one(base, out))
        if "probe" in args.inits:
            subsets = sorted(args.runs.glob(f"{tag}-*-s{args.seed}/labelled.txt"))
            if not subsets:
                raise SystemExit(f"--inits probe: no {tag} fine-tuning run in {args.runs} yet")
            probe = probe_one(args.pretrained, args.data, subsets[0].parent)
            _record(args, pre, labels, "linear-probe", "probe", probe)
    return 0


def _record(
    args: argparse.Namespace, pre: str, labels: str, name: str, init: str, run: dict[str, Any]
) -> None:
    """Append one run's record to ``--record`` and print it."""
    rec = {"pretraining": pre, "labels": labels, "candidate": name, "init": init}
    for key in ("crop", "optimizer"):
        if key in run:
            rec[key] = run.pop(key)
    rec.update({"seed": args.seed, **run})
    rec["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with args.record.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    epochs = f"{rec['epochs']} epochs, " if "epochs" in rec else ""
    print(
        f"{labels:12s} {name:22s} {init:10s} top-1 {rec['top1']:.2%} "
        f"({epochs}{rec['seconds']:.0f}s)",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
