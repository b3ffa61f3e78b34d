"""The ways work enters genq (a CSV batch, the request stream, scheduled runs), and the `genq` command line
(`producer/cli/`, the top floor)."""
