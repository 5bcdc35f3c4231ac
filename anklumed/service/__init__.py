"""The D-Bus face of anklumed: the only package that knows about D-Bus."""
