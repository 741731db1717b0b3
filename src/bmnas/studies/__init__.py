"""Studies over the method: ablations over seeds (searched, random, SMBO strategies), Optuna
sweeps, SMBO."""
