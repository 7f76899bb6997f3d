"""Engine adapters: verl (distributed) and TRL (single machine)."""
