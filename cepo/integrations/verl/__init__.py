"""verl engine: Ray + FSDP + vLLM trainer with the CEPO/RLSD teacher passes (see docs/verl.md)."""
