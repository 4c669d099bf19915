"""metacollapse: neural collapse in Prototypical Networks on Omniglot, as a reproducible pipeline."""

__version__ = "0.1.0"
