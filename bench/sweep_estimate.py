"""How long a sweep takes on one GPU, estimated from its configs alone (nothing is trained).

    python -m bench.sweep_estimate experiment=addition_emergence            # 60 runs
    python -m bench.sweep_estimate experiment=addition_emergence --mfu 0.2 --overhead-ms 1.5

Every point of the experiment's sweep (Hydra's sweeper params, expanded as the basic sweeper
does) is composed like `python -m train` would, its FLOPs counted analytically
(models.ladder.flops_per_token x steps x batch x n_ctx), and timed as

    FLOPs / (MFU x peak)  +  steps x per-step overhead / members per process

The first term dominates the large rungs (matmul-bound); the second, the launch overhead of a
step (kernel launches, optimizer, Python), dominates the small ones and is what packing seeds
into one process (`train.ensemble`, conf/experiment/*_packed.yaml) divides. MFU, peak and
overhead are stated assumptions, replaced by the GPU check's measured figures when known.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import tasks
from models.ladder import flops_per_token
from train.config import register
from train.loop import model_config_for

CONF = Path(__file__).resolve().parents[1] / "conf"
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100/H200 SXM datasheet


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """One override list per process of the sweep the overrides select (the cartesian product
    of the sweeper's params); inside an initialized Hydra context."""
    base = compose("config", overrides, return_hydra_config=True)
    params = OmegaConf.to_container(base.hydra.sweeper.params) or {}
    axes = [[f"{key}={value}" for value in str(values).split(",")]
            for key, values in params.items()]
    return [overrides + list(point) for point in itertools.product(*axes)]


def estimate(overrides: list[str], mfu: float, peak: float, overhead_s: float) -> list[dict]:
    rows, built = [], {}
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for point in sweep_points(overrides):
            cfg = OmegaConf.to_object(compose("config", point))
            key = repr(cfg.task)  # one build per distinct task: building makes its eval sets
            task = built[key] = built.get(key) or tasks.build(cfg.task)
            model = model_config_for(cfg.model, task).for_building()
            members = cfg.train.ensemble
            flops = (flops_per_token(model) * cfg.train.steps * cfg.train.batch_size
                     * model.n_ctx * members)
            compute_s = flops / (mfu * peak)
            rows.append({"d_model": model.d_model, "n_layers": model.n_layers,
                         "members": members, "flops": flops, "compute_s": compute_s,
                         "overhead_s": cfg.train.steps * overhead_s,
                         "seconds": compute_s + cfg.train.steps * overhead_s})
    return rows


def report(rows: list[dict], mfu: float, peak: float, overhead_s: float) -> str:
    runs = sum(r["members"] for r in rows)
    total = sum(r["seconds"] for r in rows)
    bound = sum(r["compute_s"] > r["overhead_s"] for r in rows)
    return (f"{runs} runs in {len(rows)} processes: {sum(r['flops'] for r in rows):.3g} FLOPs; "
            f"at {mfu:.0%} MFU of {peak / 1e12:.0f} TFLOP/s and {overhead_s * 1e3:.1f} ms "
            f"overhead per step: {total / 60:.1f} min one after another "
            f"({bound} processes compute-bound, {len(rows) - bound} overhead-bound); "
            f"largest process {max(r['seconds'] for r in rows) / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep_estimate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", default=["experiment=addition_emergence"])
    parser.add_argument("--mfu", type=float, default=0.3, help="achieved MFU (default 0.3)")
    parser.add_argument("--peak", type=float, default=H100_BF16_PEAK,
                        help="peak FLOP/s (default H100/H200 dense bf16)")
    parser.add_argument("--overhead-ms", type=float, default=2.0,
                        help="per-step launch overhead of one process (default 2.0 ms)")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu={args.mfu}: must be in (0, 1]")
    rows = estimate(args.overrides, args.mfu, args.peak, args.overhead_ms / 1e3)
    print(report(rows, args.mfu, args.peak, args.overhead_ms / 1e3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
