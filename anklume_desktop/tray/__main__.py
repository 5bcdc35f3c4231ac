"""``python -m anklume_desktop.tray``: the tray applet (``anklume-tray``)."""

import sys

from anklume_desktop.tray.applet import main

sys.exit(main())
