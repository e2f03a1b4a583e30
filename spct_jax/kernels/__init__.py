"""Hand-written kernels for paths where XLA's own lowering is the bottleneck (see each module's docstring)."""
