import sys

from anklume_image.cli import main

sys.exit(main())
