"""The method, in data-flow order: run -> search -> rerank -> train -> probe; each file imports
only those after it (and the floors below). Submodules only: importing one never shadows
bmnas.search or bmnas.train."""
