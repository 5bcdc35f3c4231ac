"""anklumed: the anklume Live daemon (A/B slots, boot assessment, data disk)."""

__version__ = "0.1.0"
