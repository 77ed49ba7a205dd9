"""Training: the loop, EMA, checkpoints and the sample grids written while training."""
