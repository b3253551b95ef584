"""Training layer: the one training skeleton (pipeline.py) and its methods (methods/: SFT, DPO, ORPO, SimPO,
KTO), where a run starts, trainer arguments, distributed helpers, loss plot and sweep summaries."""
