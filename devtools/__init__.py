"""Development and test tooling (simulated stick, private bus, fake polkit).

Nothing here is installed with the product.
"""
