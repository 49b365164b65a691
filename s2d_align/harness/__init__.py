"""The harness: variants, planning and running grids, the results store, sweeps, reports."""
