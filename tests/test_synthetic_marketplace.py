"""Synthetic marketplace: determinism, contract shape, page structure, images,
bad-row injection and the click model's visual signal (small sizes: seconds)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from courier_spark.data.synthetic import (
    CATEGORIES, COLOURS, PATTERNS, SHAPES, MarketplaceParams, generate_marketplace,
    render_item_image, taste_match,
)
from courier_spark.data.synthetic.images import BACKDROP_MAX_SATURATION, backdrop_style
from courier_spark.data.synthetic.marketplace import _BRANDS

SMALL = dict(world="v1", n_users=300, n_items=600, n_days=4, image_size=32)


@pytest.fixture(scope="module")
def market():
    return generate_marketplace(MarketplaceParams(seed=11, **SMALL))


@pytest.fixture(scope="module")
def big_market():
    # enough impressions for stable click statistics; small images keep it fast
    return generate_marketplace(MarketplaceParams(world="v1", seed=3, n_users=1000, n_items=800, n_days=6, image_size=16))


def _joined(m) -> pd.DataFrame:
    imp = m.impressions.merge(m.item_factors, on="item_id", how="left", validate="many_to_one")
    imp = imp.merge(m.user_tastes, on="user_id", how="left", validate="many_to_one")
    imp["tm"] = taste_match(imp["fav_colour"], imp["fav_pattern"], imp["fav_shape"],
                            imp["colour"], imp["pattern"], imp["shape"])
    vw = {c.name: c.visual_weight for c in CATEGORIES}
    imp["visual"] = imp["category"].map(vw) >= 0.5
    return imp


def _decode(b: bytes) -> Image.Image:
    with Image.open(io.BytesIO(b)) as im:
        im.load()
        return im.convert("RGB")


def _dominant_colour(im: Image.Image) -> int:
    """Palette index nearest to the circular mean hue of the saturated pixels."""
    hsv = np.asarray(im.convert("HSV"), dtype=np.float64)
    sel = (hsv[..., 1] > 90) & (hsv[..., 2] > 40)
    assert sel.sum() > 0.05 * sel.size, "shape region too small to read a hue"
    ang = hsv[..., 0][sel] / 256.0 * 2 * np.pi
    hue = np.degrees(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean())) % 360
    dist = [min(abs(hue - h), 360 - abs(hue - h)) for _, h in COLOURS]
    return int(np.argmin(dist))


# ----------------------------------------------------------------- determinism

def test_same_seed_gives_identical_frames(market):
    again = generate_marketplace(MarketplaceParams(seed=11, **SMALL))
    for name in ("items", "impressions", "item_factors", "user_tastes"):
        pd.testing.assert_frame_equal(getattr(market, name), getattr(again, name))
    assert market.items["image"].tolist() == again.items["image"].tolist()  # byte-identical images
    assert market.stats == again.stats


def test_different_seed_differs(market):
    other = generate_marketplace(MarketplaceParams(seed=12, **SMALL))
    assert not market.items["image"].equals(other.items["image"])
    assert not market.item_factors[["colour", "pattern", "shape"]].equals(
        other.item_factors[["colour", "pattern", "shape"]])
    n = min(len(market.impressions), len(other.impressions))
    assert (market.impressions["item_id"].to_numpy()[:n] != other.impressions["item_id"].to_numpy()[:n]).any()


def test_items_do_not_depend_on_traffic_params(market):
    # separate random streams: more days must not change the catalogue
    longer = generate_marketplace(MarketplaceParams(seed=11, **{**SMALL, "n_days": 5}))
    pd.testing.assert_frame_equal(market.items, longer.items)
    assert len(longer.impressions) > len(market.impressions)


# ----------------------------------------------------------------- contract

def test_contract_columns_and_dtypes(market):
    items, imps = market.items, market.impressions
    assert list(items.columns) == ["item_id", "category", "title", "price", "image", "updated_at"]
    assert list(imps.columns) == ["event_id", "request_id", "user_id", "query", "item_id",
                                  "position", "event_ts", "clicked"]
    assert items["item_id"].dtype == np.int64 and items["item_id"].is_unique
    assert items["price"].dtype == np.float64 and (items["price"] >= 0).all()
    assert str(items["updated_at"].dtype) == "datetime64[ns]"
    assert items["updated_at"].max() < pd.Timestamp("2026-09-01")
    assert all(isinstance(b, bytes) for b in items["image"])
    assert items["category"].isin([c.name for c in CATEGORIES]).all()
    assert imps["user_id"].dtype == np.int64 and imps["item_id"].dtype == np.int64
    assert imps["position"].dtype == np.int32 and imps["clicked"].dtype == bool
    assert str(imps["event_ts"].dtype) == "datetime64[ns]"
    assert imps[["event_id", "request_id", "user_id", "item_id", "event_ts", "clicked"]].notna().all().all()
    assert imps["event_id"].map(type).eq(str).all()
    # ids are sparse, never 0..n-1
    assert items["item_id"].min() > 0 and items["item_id"].max() > len(items)


def test_event_ids_unique_and_items_exist(market):
    imps = market.impressions
    assert imps["event_id"].is_unique
    assert imps["item_id"].isin(market.items["item_id"]).all()
    assert imps["user_id"].isin(market.user_tastes["user_id"]).all()
    assert market.injected == {"null_key": 0, "unknown_item": 0, "duplicate_event_id": 0,
                               "undecodable_image": 0}


def test_titles_do_not_reveal_looks(market):
    words = {n for n, _ in COLOURS} | set(PATTERNS) | set(SHAPES) | {"striped", "dotted", "checked", "round"}
    tokens = {t for title in market.items["title"] for t in title.lower().split()}
    assert not tokens & words


def test_factors_independent_of_category(big_market):
    f = big_market.item_factors
    visual = f["category"].isin([c.name for c in CATEGORIES if c.visual_weight >= 0.5])
    # colour shares in visual vs non-visual categories agree within noise
    a = f.loc[visual, "colour"].value_counts(normalize=True).sort_index()
    b = f.loc[~visual, "colour"].value_counts(normalize=True).sort_index()
    assert (a - b).abs().max() < 0.08


# ----------------------------------------------------------------- pages

def test_pages_share_ts_request_user_category(market):
    imps = market.impressions.merge(market.item_factors[["item_id", "category"]], on="item_id")
    g = imps.groupby("request_id")
    assert (g[["user_id", "event_ts", "category"]].nunique() == 1).all().all()
    assert (g["query"].apply(lambda q: q.isna().all() or q.nunique() == 1)).all()
    # positions 0..n-1, no item twice on a page
    assert g["position"].apply(lambda p: sorted(p) == list(range(len(p)))).all()
    assert (g["item_id"].nunique() == g.size()).all()
    assert (g.size() == 10).all()
    # both search and recommendation pages; queries are category words
    page_q = g["query"].first()
    assert 0.55 < page_q.notna().mean() < 0.85
    nouns = {n for c in CATEGORIES for n in c.nouns}
    assert set(page_q.dropna()) <= nouns


def test_sessions_are_separated_by_a_30_minute_gap(market):
    pages = (market.impressions.groupby("request_id").agg(user_id=("user_id", "first"), ts=("event_ts", "first"))
             .sort_values(["user_id", "ts"]))
    gaps = pages.groupby("user_id")["ts"].diff().dropna().dt.total_seconds()
    within = gaps[gaps <= 30 * 60]
    assert len(within) > 0 and within.min() >= 60 and within.max() <= 600  # pages 1-10 min apart
    assert (gaps[gaps > 600] >= 3600).all()  # sessions at least an hour apart
    start = pd.Timestamp("2026-09-01")
    assert pages["ts"].min() >= start and pages["ts"].max() < start + pd.Timedelta(days=4)


# ----------------------------------------------------------------- images

@pytest.mark.parametrize("fmt,backdrop", [("png", None), ("jpeg", None), ("png", 2), ("jpeg", 8)])
def test_render_decodes_to_size_and_colour(fmt, backdrop):
    rng = np.random.default_rng(0)
    seen = set()
    for colour in range(len(COLOURS)):
        for pattern in range(len(PATTERNS)):
            for shape in range(len(SHAPES)):
                b = render_item_image(colour, pattern, shape, 48, rng, fmt, backdrop=backdrop)
                assert b.startswith(b"\x89PNG" if fmt == "png" else b"\xff\xd8\xff")
                im = _decode(b)
                assert im.size == (48, 48)
                assert _dominant_colour(im) == colour, (colour, pattern, shape)
                seen.add(b)
    assert len(seen) == len(COLOURS) * len(PATTERNS) * len(SHAPES)


def test_render_rejects_bad_factor():
    with pytest.raises(ValueError):
        render_item_image(len(COLOURS), 0, 0, 32, np.random.default_rng(0))


def test_marketplace_images_match_hidden_colour(market):
    imgs = market.items.set_index("item_id")["image"]
    f = market.item_factors.set_index("item_id")
    assert imgs.map(len).nunique() > 1 and imgs.is_unique  # noise: no two images identical
    for item_id in f.index[:150]:
        im = _decode(imgs[item_id])
        assert im.size == (32, 32)
        assert _dominant_colour(im) == f.at[item_id, "colour"]


def _corners(b: bytes) -> np.ndarray:
    """Mean RGB of the four 6x6 corners (backdrop only: shapes stay inside the frame)."""
    a = np.asarray(_decode(b), dtype=float)
    return np.concatenate([a[:6, :6], a[:6, -6:], a[-6:, :6], a[-6:, -6:]]).reshape(-1, 3).mean(axis=0)


def test_backdrop_styles_are_muted_deterministic_and_distinct():
    styles = [backdrop_style(b) for b in range(len(_BRANDS))]
    assert styles == [backdrop_style(b) for b in range(len(_BRANDS))]
    for st in styles:
        for tone in (st.tone_a, st.tone_b):
            mx, mn = max(tone), min(tone)
            assert (mx - mn) / mx < BACKDROP_MAX_SATURATION  # HSV saturation: never read as an item colour
    assert len({(st.tone_a, st.gradient, st.texture) for st in styles}) == len(styles)
    with pytest.raises(ValueError):
        backdrop_style(-1)


def test_items_of_a_brand_share_its_backdrop():
    # the hidden backdrop is the brand named first in the title, and photos of
    # one brand look alike at the corners while different brands do not
    market = generate_marketplace(MarketplaceParams(seed=11, brand_backdrops=True, **SMALL))
    items = market.items.merge(market.item_factors[["item_id", "backdrop"]], on="item_id")
    assert (items["title"].str.split(" ").str[0] == items["backdrop"].map(lambda b: _BRANDS[b])).all()
    corners = np.stack([_corners(b) for b in items["image"]])
    centres = {b: corners[items["backdrop"] == b].mean(axis=0) for b in items["backdrop"].unique()}
    within = np.mean([np.abs(c - centres[b]).mean() for c, b in zip(corners, items["backdrop"])])
    between = np.mean([np.abs(centres[a] - centres[b]).mean() for a in centres for b in centres if a < b])
    assert between > 3 * within, (within, between)


def test_plain_background_by_default(market):
    m = market
    assert (m.item_factors["backdrop"] == -1).all()
    corners = np.stack([_corners(b) for b in m.items["image"][:100]])
    assert corners.min() > 185 and np.ptp(corners, axis=1).max() < 20  # light, nearly neutral grey


def test_pattern_and_shape_change_the_image():
    # same colour, different pattern/shape -> clearly different pixel statistics
    def arr(pattern, shape):
        return np.asarray(_decode(render_item_image(5, pattern, shape, 64, np.random.default_rng(1))), dtype=float)
    sat = lambda a: (a.max(axis=2) - a.min(axis=2)) > 60  # noqa: E731 - saturated (shape) pixels
    inside_std = lambda a: a.max(axis=2)[sat(a)].std()  # noqa: E731 - brightness spread in the shape
    solid = arr(0, 0)
    for pattern in (1, 2, 3):  # two-tone patterns vs a flat fill
        assert inside_std(arr(pattern, 0)) > 3 * inside_std(solid) + 10, PATTERNS[pattern]
    circle, star = solid, arr(0, 3)
    assert sat(circle).sum() > sat(star).sum() * 1.2  # a star covers less area than a disc


# ----------------------------------------------------------------- bad rows

def test_injected_bad_rows_exact_and_detectable():
    p = MarketplaceParams(world="v1", seed=5, n_users=200, n_items=300, n_days=3, image_size=16,
                          bad_null_keys=13, bad_unknown_items=7, bad_duplicate_events=9, bad_images=5)
    m = generate_marketplace(p)
    clean = generate_marketplace(MarketplaceParams(world="v1", seed=5, n_users=200, n_items=300, n_days=3, image_size=16))
    assert m.injected == {"null_key": 13, "unknown_item": 7, "duplicate_event_id": 9, "undecodable_image": 5}
    imps = m.impressions
    assert len(imps) == len(clean.impressions) + 9
    keys = ["event_id", "request_id", "user_id", "item_id", "event_ts", "clicked"]
    null_row = imps[keys].isna().any(axis=1)
    assert null_row.sum() == 13
    assert (imps[keys].isna().sum(axis=1) <= 1).all()  # one null key per bad row
    assert (imps[keys].isna().sum() >= 2).all()          # spread over every key column
    for c in ("user_id", "item_id", "clicked"):  # Spark-convertible without Arrow: Python values + None
        assert {type(v) for v in imps[c] if v is not None} == ({bool} if c == "clicked" else {int})
    unknown = imps["item_id"].notna() & ~imps["item_id"].isin(m.items["item_id"])
    assert unknown.sum() == 7
    assert not (unknown & null_row).any()
    ok_ids = imps.loc[imps["event_id"].notna(), "event_id"]
    assert ok_ids.duplicated().sum() == 9
    # duplicates are identical copies of rows that are otherwise valid
    dup = imps[imps["event_id"].notna() & imps.duplicated("event_id", keep=False)]
    assert (dup.groupby("event_id").size() == 2).all()
    assert len(dup.drop_duplicates()) == len(dup) // 2
    assert not dup[keys].isna().any().any() and dup["item_id"].isin(m.items["item_id"]).all()

    def decodable(b):
        try:
            _decode(b)
            return True
        except Exception:  # noqa: BLE001
            return False
    assert (~m.items["image"].map(decodable)).sum() == 5
    # everything else is untouched
    assert (m.items["image"] != clean.items["image"]).sum() == 5
    assert m.stats == clean.stats


def test_too_many_bad_rows_rejected():
    with pytest.raises(ValueError):
        generate_marketplace(MarketplaceParams(n_users=5, n_items=50, n_days=1, image_size=16,
                                               bad_duplicate_events=10**6))


# ----------------------------------------------------------------- click model

def test_ctr_and_visual_share_in_range(big_market):
    s = big_market.stats
    assert s["n_impressions"] == len(big_market.impressions)
    assert s["n_clicks"] == big_market.impressions["clicked"].sum()
    assert 0.06 < s["ctr"] < 0.2
    assert 0.35 < s["visual_click_share"] < 0.7
    assert s["ctr_visual_categories"] > s["ctr_nonvisual_categories"]


def test_clicks_follow_taste_only_in_visual_categories(big_market):
    imp = _joined(big_market)
    vis, non = imp[imp["visual"]], imp[~imp["visual"]]
    d_vis = vis.loc[vis["clicked"], "tm"].mean() - vis.loc[~vis["clicked"], "tm"].mean()
    d_non = non.loc[non["clicked"], "tm"].mean() - non.loc[~non["clicked"], "tm"].mean()
    assert d_vis > 0.05
    assert abs(d_non) < 0.03
    assert d_vis > 3 * abs(d_non)
    # the effect is in the looks, not in the category: same users, CTR by match level
    by_tm = vis.groupby(vis["tm"] >= 1 / 3)["clicked"].mean()
    assert by_tm[True] > 1.4 * by_tm[False]


def test_position_and_popularity_bias(big_market):
    imp = _joined(big_market)
    ctr_pos = imp.groupby("position")["clicked"].mean()
    assert ctr_pos[0] > ctr_pos[9] * 1.3
    hi = imp["popularity"] > imp["popularity"].median()
    assert imp.loc[hi, "clicked"].mean() > imp.loc[~hi, "clicked"].mean()
