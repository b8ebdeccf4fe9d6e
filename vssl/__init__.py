"""vssl."""
