"""Deterministic synthetic marketplace (pure numpy/pandas/Pillow); see marketplace.py (the story), images.py (the pictures), bad_rows.py."""
from courier_spark.data.synthetic.images import COLOURS, PATTERNS, SHAPES, render_item_image
from courier_spark.data.synthetic.marketplace import (
    CATEGORIES,
    Category,
    Marketplace,
    MarketplaceParams,
    generate_marketplace,
    taste_match,
)

__all__ = [
    "CATEGORIES", "COLOURS", "PATTERNS", "SHAPES", "Category",
    "Marketplace", "MarketplaceParams", "generate_marketplace",
    "render_item_image", "taste_match",
]
