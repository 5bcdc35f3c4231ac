"""anklumectl: the command-line client of anklumed (it reaches it only over D-Bus)."""
