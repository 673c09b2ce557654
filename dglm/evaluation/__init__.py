"""Evaluation: the `dglm eval` harness, the methods it compares (`baselines`), independent judges
(`judges`), text metrics (`metrics`), and what the benchmark scripts share (`bench`)."""
