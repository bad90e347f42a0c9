"""The empirical probe: runs the model and measures what the symbolic pass predicts (issue 4)."""
