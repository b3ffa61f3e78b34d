"""A stand-in for DashScope that imports nothing of genq: see docs/simulator.md."""
