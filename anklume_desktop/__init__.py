"""anklume Live's desktop clients: the welcome guide (terminal and browser),
the tray applet and its notifications.

A user-session program, never root. It reaches anklumed only over the system
bus, through ``anklume_desktop.daemon`` (the one module that knows the bus
names), and never imports ``anklumed`` (tests/unit/test_layering.py).
"""
