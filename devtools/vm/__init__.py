"""The real-kernel test tier: Debian's kernel in QEMU over this machine's root.

kernel.py fetches and caches the kernel and builds the initramfs; guest.py boots
it, serves the guest's disk hot-plug requests and returns an explicit result;
guestctl.py is the guest-side half of that control channel.
"""
