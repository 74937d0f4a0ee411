"""The explain stage: per-word attributions, faithfulness, and the pages that show them."""
