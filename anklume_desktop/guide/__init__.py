"""The welcome guide (textual): set up the data disk, mount an existing one,
a guided tour, the keyboard shortcuts (seed 000, "Guide de bienvenue")."""
