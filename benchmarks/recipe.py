"""The recipe against its plain-flow-matching peer at equal wall-clock time, scored by `eidos eval`.

1. trains the recipe (a config plus overrides; by default the embedded OpenMoji default) and reads how many
   minutes its training loop took;
2. trains the same network as plain flow matching (no masking, no consistency branch, no MAE; the peer's
   overrides below) for the same minutes (`train.time_limit_minutes`);
3. evaluates both with `eidos eval`: the recipe at 1/2/4 consistency steps and with 30 flow steps + CFG, its
   teacher (the flow model its consistency stage distilled, RUN/teacher-<step>) and the peer with 30 flow steps
   + CFG (or at each count of --flow-steps), and prints one table (the real held-out images are the reference
   row).

    python -m benchmarks.recipe --out /tmp/recipe                       # OpenMoji, the default config
    python -m benchmarks.recipe --out /tmp/r --seeds 0 1 2              # three training seeds, and their mean
    python -m benchmarks.recipe --out /tmp/recipe --images-per-prompt 5   # the same runs, 5 eval rounds
    python -m benchmarks.recipe --out /tmp/recipe --flow-steps 1 2 4 8 30  # flow rows against NFE
    python -m benchmarks.recipe --out /tmp/g --image-set glyphs         # the second image set (glyph_set.py)
    python -m benchmarks.recipe --out /tmp/s --image-set shapes         # the third (shape_set.py): layouts
    python -m benchmarks.recipe --out /tmp/a --recipe objective.consistency_teacher=sample   # an ablation
    python -m benchmarks.recipe --out /tmp/p --peer train.optimizer=adamw   # the peer with AdamW, not Muon
    python -m benchmarks.recipe --out $OUT/gpu --config configs/openmoji-gpu.yaml --fit-minutes 7   # on a GPU

--fit-minutes M first times a short probe of every stage of the recipe and sets train.max_steps so that its
stages, in their configured proportions, take about M minutes on this machine.

Rerunning with the same --out reuses finished runs and evaluations (each step is skipped when its output
exists), so more eval rounds, another sampler or more --seeds only pay for what is new. Each seed's runs live in
OUT/seed-S; what else trains them (config, overrides, data, --fit-minutes) is recorded in OUT/runs.json, and a
rerun that changes it is refused: use another --out for an ablation. With several seeds a last table gives each
number's mean over the seeds and their standard deviation (how much one training run moves it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine
from eidos.cli.evaluate import format_metric
from eidos.config import default_config_path, load_config
from eidos.training.teacher import exported_teachers

PEER = ["objective.consistency_weight=0", "objective.mae_weight=0"]


def peer_overrides(config_path: str | None, recipe: list[str]) -> list[str]:
    """Plain flow matching with the recipe's optimizer: one unmasked flow stage at the recipe's first learning
    rate (its flow stages')."""
    learning_rate = load_config(config_path or default_config_path(), recipe).train.stages[0].learning_rate
    stage = {"name": "flow", "fraction": 1.0, "mask_ratio": 0.0, "learning_rate": learning_rate, "consistency": False}
    return [*PEER, f"train.stages={json.dumps([stage])}"]


# The synthetic image sets built through the generic path: --image-set NAME -> (module, file prefix).
IMAGE_SETS = {"glyphs": ("benchmarks.glyph_set", "glyph"), "shapes": ("benchmarks.shape_set", "shapes")}
SET_IMAGES, SET_HELD_OUT = 2000, 100


def eidos(*args: str, log: Path) -> float:
    """Run an eidos command, its output to `log`; returns its wall-clock seconds. Exits on failure."""
    start = time.monotonic()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "eidos.cli.main", *args], stdout=handle,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"eidos {' '.join(args[:2])} failed (exit {done.returncode}); see {log}")
    return time.monotonic() - start


def image_set_config(out: Path, name: str) -> list[str]:
    """Build the image set `name` through the generic path (folders -> shards -> HDF5 caches); the data
    overrides."""
    module, prefix = IMAGE_SETS[name]
    images, caches = out / f"{prefix}-images", out / f"{prefix}-cache"
    if not (caches / "held_out").is_dir():
        subprocess.run([sys.executable, "-m", module, "--out", str(images), "--images", str(SET_IMAGES),
                        "--held-out", str(SET_HELD_OUT)], check=True, cwd=Path(__file__).parents[1])
        for split in ("train", "held_out"):
            shards = out / f"{prefix}-shards" / split
            eidos("data", "shards", "--images", str(images / split), "--out", str(shards), log=out / f"{split}.log")
            eidos("data", "encode", "--shards", str(shards / "*.tar"), "--out", str(caches / split), "--codec",
                  "pixels", "--resolution", "32", log=out / f"{split}.encode.log")
    return ["data.source=cache", f"data.train_files={caches}/train/*.h5",
            f"data.held_out_files={caches}/held_out/*.h5"]


def fit_steps(minutes: float, out: Path, config_path: str | None, overrides: list[str], run_args: list[str]) -> int:
    """train.max_steps that makes the recipe's stages take about `minutes` here, from a probe of 20 steps per
    stage (the first timing window of each, with its warm-up and stage switch, is not used)."""
    config = load_config(config_path or default_config_path(), overrides)
    stages = config.train.stages
    probe = out / "probe"
    if not (probe / "model").is_dir():
        even = [{**dataclasses.asdict(stage), "fraction": 1 / len(stages)} for stage in stages]
        eidos("train", "--output-dir", str(probe), *run_args, f"train.max_steps={20 * len(stages)}",
              f"train.stages={json.dumps(even)}", "train.log_every=5", "train.sample_every=100000",
              "train.checkpoint_every=100000", log=out / "probe.train.log")
    metrics = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines()]
    seconds = 0.0
    for index, stage in enumerate(stages):
        rate = statistics.median([m["samples_per_sec"] for m in metrics if m["stage"] == index][1:])
        seconds += stage.fraction * config.train.batch_size / rate
    return int(60 * minutes / seconds)


def check_same_runs(out: Path, settings: dict) -> None:
    """Record what trains the runs in OUT/runs.json; refuse (SystemExit) a rerun whose settings differ."""
    record = out / "runs.json"
    if record.exists():
        before = json.loads(record.read_text())
        changed = [f"{key}: {before.get(key)!r} -> {value!r}" for key, value in settings.items()
                   if before.get(key) != value]
        if changed:
            sys.exit(f"{out} holds runs trained with other settings ({'; '.join(changed)}); their results would "
                     f"be reused: choose another --out")
    else:
        record.write_text(json.dumps(settings, indent=1) + "\n")


def train_and_eval(name: str, out: Path, overrides: list[str], eval_args: list[str]) -> tuple[dict, float]:
    run = out / name
    if not (run / "model").is_dir():
        eidos("train", "--output-dir", str(run), *overrides, log=out / f"{name}.train.log")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return evaluate(name, run, out, eval_args), metrics[-1]["train_minutes"]


def evaluate(name: str, model: Path, out: Path, eval_args: list[str]) -> dict:
    """`eidos eval` of `model`, its result kept under a name that spells the eval arguments (reused if there, unless
    an older eval wrote it: one whose sampler rows lack their network evaluations is scored again)."""
    result = out / f"{name}.eval{''.join('_' + arg.lstrip('-') for arg in eval_args)}.json"
    if result.exists():
        kept = json.loads(result.read_text())
        if all("nfe" in row for row in kept["rows"] if not is_reference(row)):
            return kept
    eidos("eval", "--checkpoint", str(model), "--out", str(result), *eval_args, log=out / f"{name}.eval.log")
    return json.loads(result.read_text())


def is_reference(row: dict) -> bool:
    """The real held-out images' row or chance's: the same for every model evaluated on the data."""
    return row["images"].startswith(("real", "chance"))


def run_seed(args, seed: int, out: Path, data: list[str], max_steps: list[str]
             ) -> tuple[list[tuple[str, dict]], float, float]:
    """Train and score the recipe (on the `data` overrides, with the `max_steps` one if any), its teacher and the
    peer with training seed `seed` in `out`: the labelled eval results and both runs' training minutes."""
    out.mkdir(parents=True, exist_ok=True)
    common = (["--config", args.config] if args.config else []) + ["--seed", str(seed)] + data
    recipe_overrides = data + args.recipe  # the config keys the recipe run sets
    flow = ["--flow-steps", *map(str, args.flow_steps), "--guidance-scale", str(args.guidance_scale),
            "--images-per-prompt", str(args.images_per_prompt)]

    recipe, recipe_minutes = train_and_eval("recipe", out, common + args.recipe + max_steps, flow)
    # The flow model the consistency stage distilled (the EMA when it began), with the flow sampler.
    flow_only = flow + ["--consistency-steps"]
    teachers = [(f"its teacher ({folder.name})", evaluate(folder.name, folder, out, flow_only))
                for folder in exported_teachers(out / "recipe")]
    peer_args = peer_overrides(args.config, recipe_overrides) + args.peer
    peer_run = common + peer_args + ["train.max_steps=1000000", f"train.time_limit_minutes={recipe_minutes:.3f}",
                                     "train.checkpoint_every=1000000", "train.sample_every=1000000"]
    peer, peer_minutes = train_and_eval("peer", out, peer_run, flow_only)
    return [("recipe", recipe), *teachers, ("peer", peer)], recipe_minutes, peer_minutes


def table_rows(results: list[tuple[str, dict]]) -> dict[str, tuple[str, dict]]:
    """{row name: (NFE, eval row)} in table order; the real and chance rows once, from the first result, chance
    last. NFE is what eval recorded for a sampler row (network evaluations per image), "-" for the others."""
    rows = {}
    for label, result in results:
        for row in result["rows"]:
            reference = is_reference(row)
            if reference and label != results[0][0]:
                continue
            rows[row["images"] if reference else f"{label}, {row['images']}"] = (str(row.get("nfe", "-")), row)
    return dict(sorted(rows.items(), key=lambda item: item[0].startswith("chance")))  # chance last


METRICS = (("frechet", "{:.2f}"), ("top-1", "{:.1%}"), ("top-5", "{:.1%}"))


def print_table(rows: dict[str, tuple[str, dict]]) -> None:
    print("| model, sampler | NFE | Fréchet distance | top-1 | top-5 |")
    print("|---|---|---|---|---|")
    for name, (nfe, row) in rows.items():
        print(f"| {name} | {nfe} | {' | '.join(format_metric(row, key, form) for key, form in METRICS)} |")


def over_seeds(per_seed: list[dict[str, tuple[str, dict]]]) -> dict[str, tuple[str, dict]]:
    """Each row's numbers as the mean over the seeds of each seed's value (itself a mean over the eval rounds),
    with the standard deviation over the seeds: the spread of training, not of the eval's noise."""
    merged = {}
    for name, (nfe, first) in per_seed[0].items():
        if is_reference(first):  # the same for every seed
            merged[name] = (nfe, first)
            continue
        rows = [seed_rows[name][1] for seed_rows in per_seed if name in seed_rows]
        row = {}
        for key, _ in METRICS:
            values = [r[key] for r in rows if key in r]
            if values:
                row[key] = statistics.mean(values)
                if len(values) > 1:
                    row[key + " std"] = statistics.stdev(values)
        merged[name] = (nfe, row)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs, logs and eval results")
    parser.add_argument("--config", help="the recipe's config (default: the embedded OpenMoji default)")
    parser.add_argument("--recipe", nargs="*", default=[], help="overrides of the recipe run")
    parser.add_argument("--peer", nargs="*", default=[],
                        help="overrides of the peer run, after the peer's own (e.g. train.optimizer=adamw)")
    parser.add_argument("--image-set", choices=sorted(IMAGE_SETS),
                        help="train on a synthetic image set instead of the config's data: glyphs (glyph_set.py), "
                        "shapes (shape_set.py)")
    parser.add_argument("--glyphs", dest="image_set", action="store_const", const="glyphs",
                        help="the same as --image-set glyphs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; each trains the recipe and its peer in OUT/seed-S (default: 0)")
    parser.add_argument("--fit-minutes", type=float, help="size train.max_steps to about this many minutes here")
    parser.add_argument("--flow-steps", type=int, nargs="+", default=[30], metavar="N",
                        help="flow Euler step counts of the flow rows, e.g. 2 4 8 30: quality against NFE")
    parser.add_argument("--guidance-scale", type=float, default=1.75, help="CFG of the flow rows")
    parser.add_argument("--images-per-prompt", type=int, default=1,
                        help="eval rounds of one image per caption (rows: mean ± std over the rounds)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check_same_runs(args.out, {"config": args.config, "recipe": args.recipe, "peer": args.peer,
                               "image_set": args.image_set, "fit_minutes": args.fit_minutes})
    data = image_set_config(args.out, args.image_set) if args.image_set else []
    max_steps = []
    if args.fit_minutes:  # one probe for all seeds: the same budget for each
        run_args = (["--config", args.config] if args.config else []) + data + args.recipe
        steps = fit_steps(args.fit_minutes, args.out, args.config, data + args.recipe, run_args)
        print(f"--fit-minutes {args.fit_minutes:g}: train.max_steps={steps}")
        max_steps = [f"train.max_steps={steps}"]
    per_seed = []
    for seed in args.seeds:
        results, recipe_minutes, peer_minutes = run_seed(args, seed, args.out / f"seed-{seed}", data, max_steps)
        per_seed.append(table_rows(results))
        print(f"\n{machine()}; training minutes: recipe {recipe_minutes:.1f}, peer {peer_minutes:.1f}; seed {seed}; "
              f"{args.image_set or 'config data'}; recipe overrides {args.recipe or 'none'}; peer "
              f"overrides {args.peer or 'none'}\n")
        print_table(per_seed[-1])
    if len(per_seed) > 1:
        print(f"\nOver training seeds {', '.join(map(str, args.seeds))}: the mean of each seed's number ± the "
              f"standard deviation over the seeds\n")
        print_table(over_seeds(per_seed))


if __name__ == "__main__":
    main()
