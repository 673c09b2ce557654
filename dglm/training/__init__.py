"""Training: the two stages and `train all` (`stages`), the shared optimisation loop (`loop`), resumable
states (`state`) and loss curves (`plots`)."""
