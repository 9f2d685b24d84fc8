"""Sweeps through `hydra/launcher=slurm` on a real SLURM cluster: every point runs as a job and
fills its run directory; a job that reaches its time limit is checkpointed, requeued by
submitit and resumed, ending with the losses of an uninterrupted run; a job that SLURM itself
requeues (`scontrol requeue`) is waited for, and the sweep ends only once its run is complete.

Needs `sbatch` and a controller that answers (`bash .ci/slurm.sh` starts a one-node cluster;
.ci/run does so before the tests); skipped otherwise, unless PHASELAB_REQUIRE_SLURM=1 (set by
.ci/run), which makes a missing cluster a failure. The partition is the cluster's default one;
it has no GPUs, hence `gpus_per_node=0` (the preset's default is one GPU per job).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import TINY, assert_same_weights, read, records, train, wait_for, weights

ROOT = Path(__file__).resolve().parents[1]


def default_partition() -> str | None:
    """The cluster's default partition, or None where no SLURM controller answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    default = [p for p in out.stdout.split() if p.endswith("*")]
    return default[0].rstrip("*") if out.returncode == 0 and default else None


PARTITION = default_partition()
REASON = ("no SLURM cluster: `sbatch`/`sinfo` missing or no controller answers "
          "(start a one-node cluster with `bash .ci/slurm.sh`, as root)")
if PARTITION is None and os.environ.get("PHASELAB_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"PHASELAB_REQUIRE_SLURM=1 but {REASON}")
pytestmark = [pytest.mark.slow, pytest.mark.slurm,
              pytest.mark.skipif(PARTITION is None, reason=REASON)]

ON_CPU_NODES = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
                "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.mem_gb=1"]


def sweep(out: Path, *overrides: str, timeout: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "train", "-m", *TINY, *ON_CPU_NODES, f"hydra.sweep.dir={out}",
         *overrides], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_sweep_runs_every_point_as_a_slurm_job(tmp_path):
    sweep(tmp_path, "model.d_model=16,32", timeout=300)
    for job, width in enumerate((16, 32)):
        run = tmp_path / str(job)
        assert read(run / "summary.json")["status"] == "completed"
        assert read(run / "run.json")["config"]["model"]["d_model"] == width
        assert [r["step"] for r in records(run)] == [0, 3, 6, 9, 12]
        assert (run / "checkpoints/step_0000012/model.safetensors").is_file()
    # One sbatch array, one task per point.
    (script,) = tmp_path.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --array=0-1%" in script.read_text()
    assert f"#SBATCH --partition={PARTITION}" in script.read_text()


# About 3 min of training on an idle 2-core machine. The job starts with a long limit, which
# the test lowers to 2 min once training is under way: SLURM sends SIGUSR2 signal_delay_s=30
# before the limit, or up to a minute earlier, so a limit set at submission could signal
# before the job's Python had installed its handlers (a 1 min limit did, killing the job),
# and a short run could finish before a late signal (2,000 and 5,000 steps did). Once the run
# has saved and been requeued, the test lifts the limit again (as an admin may), so that the
# second attempt finishes however loaded the machine is: exactly one requeue.
STEPS = 15000
REQUEUED = ["model.d_model=64", "model.n_layers=2", f"train.steps={STEPS}", "train.log_every=50",
            "train.eval_every=500", "checkpoint.every=null"]


def job_id(out: Path) -> str:
    """The SLURM job id of the one-point sweep in `out`."""
    (job,) = [p.name for p in (out / ".submitit").iterdir() if p.name.isdigit()]
    return job


def set_time_limit(out: Path, minutes: int) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job_id(out)}", f"TimeLimit={minutes}"],
                   check=True)


def test_a_job_at_its_time_limit_is_requeued_and_resumes_exactly(tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "sweep"
    train(reference, *REQUEUED)
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *TINY, *ON_CPU_NODES, f"hydra.sweep.dir={out}",
         *REQUEUED, "hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30",
         "hydra.launcher.max_num_timeout=1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = out / "0"
    wait_for(run / "checkpoints/step_0000000", timeout=240)  # step 0 is saved under the handlers
    set_time_limit(out, 2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "summary.json").exists() and read(run / "summary.json")["status"] == "preempted":
            break
        time.sleep(0.2)
    assert read(run / "summary.json")["status"] == "preempted", "no SIGUSR2 before the end"
    set_time_limit(out, 10)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]

    resumed = read(run / "run.json")["resumed"]
    assert len(resumed) == 1 and 0 < resumed[0]["step"] < STEPS  # stopped mid-run, once
    assert read(run / "summary.json")["status"] == "completed"
    assert records(run) == records(reference)
    assert_same_weights(weights(run, STEPS), weights(reference, STEPS))


def test_a_job_requeued_by_slurm_is_waited_for_and_resumes_exactly(tmp_path):
    """`scontrol requeue` mid-training (SIGTERM, then SLURM puts the job back in the queue, as
    a partition with PreemptMode=REQUEUE does): the job saves and ends without a result, so the
    sweep command keeps waiting for the requeued job, which resumes; it exits 0 only once the
    run is complete."""
    steps = ["train.steps=600", "train.log_every=50", "train.eval_every=200"]
    reference, out = tmp_path / "reference", tmp_path / "sweep"
    train(reference, *steps)
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "-m", *TINY, *ON_CPU_NODES, f"hydra.sweep.dir={out}",
         *steps], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = out / "0"
    wait_for(run / "checkpoints/step_0000004", timeout=240)
    subprocess.run(["scontrol", "requeue", job_id(out)], check=True)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert read(run / "summary.json")["status"] == "completed"  # as the command ended
    resumed = read(run / "run.json")["resumed"]
    assert len(resumed) == 1 and 4 <= resumed[0]["step"] < 600
    assert records(run) == records(reference)
