"""The ways work enters genq (CSV batch) and the `genq` command line."""
