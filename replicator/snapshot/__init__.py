"""The snapshot engine (chunk planning, parallel copy, checkpoints), shared by snapshot, full and
delta-snapshot."""
