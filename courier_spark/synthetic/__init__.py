"""Deterministic synthetic marketplace (pure numpy/pandas/Pillow); see marketplace.py."""
from .marketplace import (
    CATEGORIES,
    COLOURS,
    PATTERNS,
    SHAPES,
    Category,
    Marketplace,
    MarketplaceParams,
    generate_marketplace,
    render_item_image,
    taste_match,
)

__all__ = [
    "CATEGORIES", "COLOURS", "PATTERNS", "SHAPES", "Category",
    "Marketplace", "MarketplaceParams", "generate_marketplace",
    "render_item_image", "taste_match",
]
