"""How networks are trained: device and precision, data parallelism, modality dropout, metrics, the
one epoch loop, checkpoints, run directories, k folds. Imports only bmnas.core."""
