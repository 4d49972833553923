"""The engine: pure, I/O-free. GCRA and window arithmetic, steps and decisions."""
