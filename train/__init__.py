"""Training: the Hydra app (`python -m train`), its config schema, the loop, checkpoints and
logging. `train.loop.run(cfg, run_dir)` is the plain entry for use from Python."""
