"""The bus-free core of anklumed: what the daemon knows and does.

``system.LiveSystem`` is the composition root: it owns the boot state, the
stick, the data disk and the jobs, runs every operation, and hands out
typed, frozen snapshots (``snapshots.py``) of what it knows. It imports no
D-Bus library (tests/unit/test_layering.py): ``anklumed/service/`` maps the
snapshots to properties and bus calls to its operations, and guards them
with polkit.
"""
