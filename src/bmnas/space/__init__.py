"""What can be built: fusion ops, Cell pieces, the search hypernet, derivation, the network a
genotype describes, hand-made fusions. Imports only bmnas.core."""
