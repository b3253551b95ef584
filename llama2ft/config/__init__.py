"""Config layer: typed schemas of every command, value checks of the training config, and the Hydra
plumbing that turns a run function into a console script."""
