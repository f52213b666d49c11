"""Small helpers shared across the package (tables, FLOP counting, atomic file writes)."""
