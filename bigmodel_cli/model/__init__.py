"""The one Transformer, its checkpoints, and the run folders that hold them."""
