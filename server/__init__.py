"""The crossrec ServerApp: orchestrates the federation's phases and writes the run folder."""
