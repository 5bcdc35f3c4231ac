"""A tiny PE32+ EFI application, for tests that sign and check UKIs.

Not a UKI and never run: one ``.text`` section of ``payload`` bytes behind
the headers sbsign and sbverify read (DOS stub pointer, COFF header, PE32+
optional header with its 16 data directories, one section header), so the
tests sign a real PE file with the real tools without a 50 MB kernel.
"""

from __future__ import annotations

import struct

FILE_ALIGN = 0x200
SECTION_RVA = 0x1000
EFI_APPLICATION = 10


def tiny_pe(payload: bytes = b"\xc3anklume test") -> bytes:
    raw = payload.ljust(max(1, -(-len(payload) // FILE_ALIGN)) * FILE_ALIGN, b"\0")
    dos = b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0022)
    optional = struct.pack(
        "<HBBIIIII", 0x20B, 0, 0, len(raw), 0, 0, SECTION_RVA, SECTION_RVA)
    optional += struct.pack("<QII", 0x10000000, 0x1000, FILE_ALIGN)
    optional += struct.pack("<HHHHHHI", 0, 0, 0, 0, 0, 0, 0)
    size_of_image = SECTION_RVA + -(-len(raw) // 0x1000) * 0x1000
    optional += struct.pack("<IIIHH", size_of_image, FILE_ALIGN, 0, EFI_APPLICATION, 0)
    optional += struct.pack("<QQQQII", 0x10000, 0x1000, 0x10000, 0x1000, 0, 16)
    optional += bytes(16 * 8)
    section = struct.pack("<8sIIIIIIHHI", b".text", len(raw), SECTION_RVA, len(raw),
                          FILE_ALIGN, 0, 0, 0, 0, 0x60000020)
    headers = dos + b"PE\0\0" + coff + optional + section
    return headers + bytes(FILE_ALIGN - len(headers)) + raw
