"""The tray applet: a StatusNotifierItem with a dbusmenu, and notifications."""
