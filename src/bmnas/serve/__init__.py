"""A trained run: load, predict, save, export, robustness. Imports the floors below it."""
