"""Deterministic synthetic marketplace (pure numpy/pandas/Pillow); see marketplace.py."""
from courier_spark.data.synthetic.marketplace import (
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
