"""The encrypted data disk: discovery, LUKS2, ZFS or BTRFS, and Incus."""
