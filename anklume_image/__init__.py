"""anklume-image: build the anklume Live stick image.

A build is a list of named stages over one frozen configuration (the shape of
mkosi's): the root filesystem from the distribution's packages, the OS slot
image (squashfs) and its signed bundle, the EFI system partition, PERSIST's
first state, and the GPT stick that holds them. Nothing is mounted and no loop
device is used on the build host: partitions are built as files and written
at their offsets, so the build runs where the kernel scans no partition table.
"""
