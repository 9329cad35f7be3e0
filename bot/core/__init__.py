"""The pure core: data and rules, no I/O (the index, policy, plans, job states, settings, masking)."""
