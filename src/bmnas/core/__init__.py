"""Floor 1, torch-free values and I/O: errors, files, locks, registries, op names, config,
genotypes, feature data. Imports nothing else of bmnas."""
