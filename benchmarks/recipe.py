"""The recipe against its plain-flow-matching peer at equal wall-clock time, scored by `eidos eval`.

1. trains the recipe (a config plus overrides; by default the embedded OpenMoji default) and reads how many
   minutes its training loop took;
2. trains the same network as plain flow matching (no masking, no consistency branch, no MAE; the peer's
   overrides below) for the same minutes (`train.time_limit_minutes`);
3. evaluates both with `eidos eval`: the recipe at 1/2/4 consistency steps and with 30 flow steps + CFG, its
   teacher (the flow model its consistency stage distilled, RUN/teacher-<step>) and the peer with 30 flow steps
   + CFG, and prints one table (the real held-out images are the reference row).

    python -m benchmarks.recipe --out /tmp/recipe                       # OpenMoji, the default config
    python -m benchmarks.recipe --out /tmp/r2 --seed 1                  # a repeat with another seed
    python -m benchmarks.recipe --out /tmp/recipe --images-per-prompt 5   # the same runs, 5 eval rounds
    python -m benchmarks.recipe --out /tmp/g --glyphs                   # the second image set (glyph_set.py)
    python -m benchmarks.recipe --out /tmp/a --recipe objective.consistency_teacher=sample   # an ablation
    python -m benchmarks.recipe --out /tmp/p --peer train.optimizer=adamw   # the peer with AdamW, not Muon
    python -m benchmarks.recipe --out $OUT/gpu --config configs/openmoji-gpu.yaml --fit-minutes 7   # on a GPU

--fit-minutes M first times a short probe of every stage of the recipe and sets train.max_steps so that its
stages, in their configured proportions, take about M minutes on this machine.

Rerunning with the same --out reuses finished runs and evaluations (each step is skipped when its output
exists), so more eval rounds or another sampler only pay for the evaluations. What trains the runs (config,
overrides, seed, data, --fit-minutes) is recorded in OUT/runs.json, and a rerun that changes it is refused: use
another --out for an ablation.
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

PEER = ["objective.consistency_weight=0", "objective.mae_weight=0"]


def peer_overrides(config_path: str | None, recipe: list[str]) -> list[str]:
    """Plain flow matching with the recipe's optimizer: one unmasked flow stage at the recipe's first learning
    rate (its flow stages')."""
    learning_rate = load_config(config_path or default_config_path(), recipe).train.stages[0].learning_rate
    stage = {"name": "flow", "fraction": 1.0, "mask_ratio": 0.0, "learning_rate": learning_rate, "consistency": False}
    return [*PEER, f"train.stages={json.dumps([stage])}"]
GLYPH_IMAGES, GLYPH_HELD_OUT = 2000, 100


def eidos(*args: str, log: Path) -> float:
    """Run an eidos command, its output to `log`; returns its wall-clock seconds. Exits on failure."""
    start = time.monotonic()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "eidos.cli.main", *args], stdout=handle,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"eidos {' '.join(args[:2])} failed (exit {done.returncode}); see {log}")
    return time.monotonic() - start


def glyph_config(out: Path) -> list[str]:
    """Build the glyph set through the generic path (folders -> shards -> HDF5 caches); the data overrides."""
    images, caches = out / "glyph-images", out / "glyph-cache"
    if not (caches / "held_out").is_dir():
        subprocess.run([sys.executable, str(Path(__file__).with_name("glyph_set.py")), "--out", str(images),
                        "--images", str(GLYPH_IMAGES), "--held-out", str(GLYPH_HELD_OUT)], check=True)
        for split in ("train", "held_out"):
            shards = out / "glyph-shards" / split
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
    """`eidos eval` of `model`, its result kept under a name that spells the eval arguments (reused if there)."""
    result = out / f"{name}.eval{''.join('_' + arg.lstrip('-') for arg in eval_args)}.json"
    if not result.exists():
        eidos("eval", "--checkpoint", str(model), "--out", str(result), *eval_args, log=out / f"{name}.eval.log")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the runs, logs and eval results")
    parser.add_argument("--config", help="the recipe's config (default: the embedded OpenMoji default)")
    parser.add_argument("--recipe", nargs="*", default=[], help="overrides of the recipe run")
    parser.add_argument("--peer", nargs="*", default=[],
                        help="overrides of the peer run, after the peer's own (e.g. train.optimizer=adamw)")
    parser.add_argument("--glyphs", action="store_true", help="train on the glyph set instead of the config's data")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both runs")
    parser.add_argument("--fit-minutes", type=float, help="size train.max_steps to about this many minutes here")
    parser.add_argument("--flow-steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=1.75, help="CFG of the flow rows")
    parser.add_argument("--images-per-prompt", type=int, default=1,
                        help="eval rounds of one image per caption (rows: mean ± std over the rounds)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check_same_runs(args.out, {"config": args.config, "recipe": args.recipe, "peer": args.peer,
                               "glyphs": args.glyphs, "seed": args.seed, "fit_minutes": args.fit_minutes})
    data = glyph_config(args.out) if args.glyphs else []
    common = (["--config", args.config] if args.config else []) + ["--seed", str(args.seed)] + data
    recipe_overrides = data + args.recipe  # the config keys the recipe run sets
    flow = ["--flow-steps", str(args.flow_steps), "--guidance-scale", str(args.guidance_scale),
            "--images-per-prompt", str(args.images_per_prompt)]

    recipe_run = common + args.recipe
    if args.fit_minutes:
        steps = fit_steps(args.fit_minutes, args.out, args.config, recipe_overrides, recipe_run)
        print(f"--fit-minutes {args.fit_minutes:g}: train.max_steps={steps}")
        recipe_run.append(f"train.max_steps={steps}")
    recipe, recipe_minutes = train_and_eval("recipe", args.out, recipe_run, flow)
    # The flow model the consistency stage distilled (the EMA when it began), with the flow sampler.
    flow_only = flow + ["--consistency-steps"]
    teachers = [(f"its teacher ({folder.name})", evaluate(folder.name, folder, args.out, flow_only))
                for folder in sorted((args.out / "recipe").glob("teacher-*/")) if folder.is_dir()]
    peer_args = peer_overrides(args.config, recipe_overrides) + args.peer
    peer_run = common + peer_args + ["train.max_steps=1000000", f"train.time_limit_minutes={recipe_minutes:.3f}",
                                     "train.checkpoint_every=1000000", "train.sample_every=1000000"]
    peer, peer_minutes = train_and_eval("peer", args.out, peer_run, flow_only)

    print(f"\n{machine()}; training minutes: recipe {recipe_minutes:.1f}, peer {peer_minutes:.1f}; seed {args.seed}; "
          f"{'glyphs' if args.glyphs else 'config data'}; recipe overrides {args.recipe or 'none'}; peer overrides "
          f"{args.peer or 'none'}\n")
    print("| model, sampler | NFE | Fréchet distance | top-1 | top-5 |")
    print("|---|---|---|---|---|")
    for label, result in (("recipe", recipe), *teachers, ("peer", peer)):
        for row in result["rows"]:
            if row["images"].startswith(("real", "chance")) and label != "recipe":
                continue
            nfe = "-"
            if row["images"].startswith("consistency"):
                nfe = row["images"].split()[1]
            elif row["images"].startswith("flow"):
                nfe = str(2 * args.flow_steps if args.guidance_scale != 1 else args.flow_steps)
            name = row["images"] if row["images"].startswith(("real", "chance")) else f"{label}, {row['images']}"
            cells = [format_metric(row, key, form) for key, form in (("frechet", "{:.2f}"), ("top-1", "{:.1%}"),
                                                                          ("top-5", "{:.1%}"))]
            print(f"| {name} | {nfe} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
