"""Training: the train state with EMA, the optimiser, the sharded step, checkpoints, the loop."""
