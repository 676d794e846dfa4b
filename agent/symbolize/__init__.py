"""Symbolization outside the target: ELF files (pyelftools) and code objects read from the
target's memory (the hot path records only addresses, STYLE guideline 6)."""
