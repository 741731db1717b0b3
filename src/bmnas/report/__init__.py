"""What a run shows: plots and tables. Imports only bmnas.core."""
