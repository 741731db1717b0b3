"""The command line: main parses and calls the command; one module per command group. Only this
floor prints results."""
