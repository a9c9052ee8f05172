"""Deterministic synthetic marketplace: items with rendered images, users with
hidden visual tastes, page views and clicks (pure numpy / pandas / Pillow).

Why it exists: COURIER learns image embeddings from clicks, so the test data
must contain a *visual* signal that only the images reveal. Every item has
hidden visual factors (colour, pattern, shape) that are drawn independently of
its category and never appear in its title; users have hidden favourite
factors; clicks in visual categories depend on how well an item's look matches
the user's taste. The hidden truth is returned separately (``item_factors``,
``user_tastes``) for evaluation only.

Generative story
----------------
* Items: category (``CATEGORIES``, fixed shares), colour (8 hues), pattern
  (solid / stripes / dots / checks), shape (circle / square / triangle / star /
  cross), Zipf-like popularity ``pop = rank ** -ZIPF_EXPONENT`` (random rank
  within the category), lognormal price by category, a title from brand +
  adjective + category noun (no look words), an image rendered from the
  factors with size, position, tilt, hue and pattern-phase jitter plus pixel
  noise (no two identical), on a light, nearly neutral background (or the
  brand's studio backdrop, below). Ids are sparse on purpose
  (item_id = 100000 + 7 i, user_id = 5000000 + 3 u).
* Backdrops (``brand_backdrops``, off by default): every brand photographs its
  items on its own backdrop, a muted two-tone gradient with a faint texture
  (``backdrop_style``). Like a real seller's studio it dominates the pixels
  but says nothing about clicks: the click model never sees it, and what it
  does say (the brand) is already in the title. It is the nuisance that makes
  generic image pre-training weak in the paper: augmentation-invariant
  features of the whole photo (SimCLR) and clusters of an untrained network
  group items by backdrop, while an encoder trained on clicks has no reason
  to. Backdrops stay below saturation 0.25, so the saturated pixels' hue
  still names the item's colour. Measured on the default data with
  backdrops on, no encoder's cluster IDs lifted the DNN CTR model any more
  (README), so they stay off by default: a harder setting to study.
* Users: favourite colour, pattern and shape (uniform), category interests
  (85 % of the mass on 2-3 favourite categories via a Dirichlet, the rest
  spread by category share), and a click bias ``b_u ~ N(0, 0.6)``.
* Page views: per user and day ``Poisson(sessions_per_user_day)`` sessions
  (at most 8); the day is cut into equal slots, one session per slot, so
  sessions are hours apart. A session has ``1 + Poisson(pages_per_session - 1)``
  pages (at most 12), 1-10 minutes apart. A page's category is drawn from the
  user's interests; its items are drawn from that category by popularity
  without replacement, in draw order, positions ``0..n-1``.
  A share ``query_rate`` of pages are searches (query = a category word), the
  rest recommendations (query None). All impressions of a page share
  ``request_id`` and ``event_ts``.

Click model
-----------
For user ``u`` shown item ``i`` of category ``c`` at 0-based ``position``::

    taste_match(u, i) = ( colour_score(colour_i, fav_colour_u)
                        + [pattern_i == fav_pattern_u]
                        + [shape_i == fav_shape_u] ) / 3          in [0, 1]
    colour_score = 1 for the favourite hue, 0.5 for its two neighbours on
                   the colour wheel (COLOURS order is circular), else 0
    logit = base_logit
          + w_popularity * pop_z(i)                 # log popularity, z-scored over impressions
          - w_position   * log1p(position)          # position bias
          + w_visual * visual_weight(c) * taste_match(u, i)
          + b_u                                     # user bias
    clicked ~ Bernoulli(sigmoid(logit))

``taste_match`` is deliberately *not* centred: the counterfactual "without the
visual term" is then a user who is indifferent to an item's look, so
``visual_click_share = (sum p - sum p_without_visual) / sum p`` over all
impressions reads as the share of clicks caused by looks. (Centring on the
mean match would leave only the Jensen gap of the sigmoid, ~0.1, for the same
click behaviour.) With the defaults: CTR ~0.14 (visual categories ~0.18,
others ~0.07) and visual_click_share ~0.53. ``w_visual`` is 4.5 because the
features under test are *history-based* (similarity of the shown item to the
user's last 5 clicks): measured with perfect taste-factor similarities on the
default data, ``w_visual = 2.0`` (visual share 0.27) left the LightGBM screen
no headroom at all (AUC 0.7493 -> 0.7491) while 4.5 leaves +2.0 % (0.7498 ->
0.7651); a demo that cannot show a visual effect tests nothing.

World v2 (``world: v2``, the default; issue 13)
-----------------------------------------------
The first world (``world: v1``, ``conf/world_v1.yaml``; everything above)
cannot tell behaviour-trained image features from generic ones: every look
factor is hidden from text and drives clicks, nothing is nuisance, and 3,000
items with ~47 impressions each let item IDs absorb look-taste. World v2
fills the 2 x 2 of visual information:

============================  ===============================  ===============================
                              drives clicks                    does not
============================  ===============================  ===============================
said by category / title      main colour (the title names it  silhouette (one per category,
                              for ``title_colour_rate`` of     ``CATEGORY_SILHOUETTE``); brand
                              the items)                       backdrop (brand in the title)
not said                      print (``PATTERNS``), a taste    lighting, pose, scale, crop
                              users keep across categories     (``nuisance`` strength)
============================  ===============================  ===============================

* Click model: the look term is ``look_match`` =
  ``text_share * colour_score + (1 - text_share) * [print == fav_print]``
  (``text_share``: the share of the click-relevant look that text reveals);
  the rest of the logit is v1's. Silhouette, backdrop and lighting never
  enter it.
* Nuisance dominates pixel variance (measured in the tests: the brand
  explains several times more pixel variance than the print) and says
  nothing about clicks: with ``nuisance: 0`` (plain grey, v1 jitter) the
  same seed gives identical impressions and clicks.
* Catalogue: 9,000 items, ~15 impressions per item at the default traffic;
  ``new_item_share`` of the items are listed just before the last (test)
  day and shown only on it.

Determinism: one ``np.random.SeedSequence(seed)`` is split into independent
streams (items, images, users, pages, clicks, bad rows), so e.g. changing
``n_days`` leaves the items and their images unchanged; every image has its
own child seed (so rendering could be parallelised without changing bytes).

NumPy scalars that meet float32 arrays are passed as Python floats
(``float(rng.uniform(...))``): NumPy 2 computes a float32 array times a NumPy
float64 scalar in float64 (NEP 50), NumPy 1 in float32, so the pixels would
move with the stack; with Python floats both compute in float32 and draw the
same images (``tests/test_synthetic_world_v2.py`` pins them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from courier_spark.core.schema import SyntheticConfig
from courier_spark.data.synthetic.bad_rows import inject_bad_rows
from courier_spark.data.synthetic.images import COLOURS, PATTERNS, SHAPES, render_item_image

__all__ = [
    "CATEGORIES", "Category", "MarketplaceParams", "Marketplace", "generate_marketplace",
    "taste_match", "CATEGORY_SILHOUETTE", "look_match", "colour_score",
]


@dataclass(frozen=True)
class Category:
    name: str
    visual_weight: float   # multiplies the visual term of the click model
    share: float           # share of the catalogue
    price_median: float    # lognormal price: median ...
    price_sigma: float     # ... and log-scale spread
    nouns: tuple[str, ...]  # title nouns and search-query words


CATEGORIES: tuple[Category, ...] = (
    Category("womens_clothing", 1.0, 0.17, 35.0, 0.6, ("dress", "blouse", "skirt", "cardigan", "top")),
    Category("mens_clothing", 1.0, 0.14, 40.0, 0.6, ("shirt", "jacket", "hoodie", "trousers", "polo")),
    Category("shoes", 1.0, 0.12, 60.0, 0.5, ("sneakers", "boots", "loafers", "sandals", "heels")),
    Category("bags", 1.0, 0.10, 45.0, 0.7, ("tote", "backpack", "clutch", "satchel", "shoulder bag")),
    Category("home_decor", 1.0, 0.11, 25.0, 0.8, ("cushion", "vase", "rug", "lamp", "throw")),
    Category("electronics", 0.1, 0.13, 80.0, 1.0, ("charger", "headphones", "speaker", "cable", "power bank")),
    Category("books", 0.1, 0.12, 15.0, 0.4, ("novel", "cookbook", "guide", "atlas", "biography")),
    Category("car_parts", 0.1, 0.11, 30.0, 0.9, ("brake pad", "air filter", "wiper blade", "spark plug", "floor mat")),
)
CATEGORY_SILHOUETTE: tuple[int, ...] = (2, 4, 3, 1, 6, 7, 5, 0)  # CATEGORIES order -> SILHOUETTES index

ZIPF_EXPONENT = 0.8       # popularity = rank ** -ZIPF_EXPONENT; ~90% of items get >= 5 impressions at default size
COLOUR_NEIGHBOUR_CREDIT = 0.5
USER_BIAS_SD = 0.6       # users differ in click-happiness (also lifts the CTR)
MAX_SESSIONS_PER_DAY = 8
MAX_PAGES_PER_SESSION = 12
PAGE_GAP_S = (60, 600)    # 1-10 minutes between pages of a session
ITEMS_COLUMNS = ("item_id", "category", "title", "price", "image", "updated_at")
IMPRESSIONS_COLUMNS = ("event_id", "request_id", "user_id", "query", "item_id",
                       "position", "event_ts", "clicked")

_BRANDS = ("Norvik", "Alto", "Kestrel", "Lumen", "Fennel", "Quarry", "Tidewell",
           "Brisa", "Hollin", "Marlow", "Oakes", "Vela")
_ADJECTIVES = ("classic", "modern", "premium", "everyday", "compact", "deluxe",
               "essential", "original", "lightweight", "signature", "durable", "new")


# The knobs are the config's `synthetic` section (one definition, with ranges).
MarketplaceParams = SyntheticConfig


@dataclass
class Marketplace:
    """Generated data.

    items: item_id int64, category str, title str, price float64, image bytes,
        updated_at datetime64[ns] (naive, UTC).
    impressions: event_id str, request_id str, user_id int64, query str/None,
        item_id int64, position int32, event_ts datetime64[ns] (naive, UTC),
        clicked bool; ordered by event_ts, page by page. A key column that
        received injected nulls is object dtype (Python values + None).
    item_factors / user_tastes: hidden truth, evaluation only.
    injected: bad rows per reason (what a validator must count).
    stats: click-model numbers, computed before bad-row injection.
    """
    items: pd.DataFrame
    impressions: pd.DataFrame
    item_factors: pd.DataFrame
    user_tastes: pd.DataFrame
    injected: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

def taste_match(fav_colour: np.ndarray, fav_pattern: np.ndarray, fav_shape: np.ndarray,
                colour: np.ndarray, pattern: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Vectorised taste match in [0, 1] (formula in the module docstring).

    Neighbouring hues earn half a colour match: a user who likes red also
    somewhat likes orange and pink, so looks form a continuum rather than
    unrelated classes."""
    return (colour_score(fav_colour, colour)
            + (np.asarray(pattern) == np.asarray(fav_pattern))
            + (np.asarray(shape) == np.asarray(fav_shape))) / 3.0


def look_match(p: MarketplaceParams, tastes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The click model's look term in [0, 1] for user-taste rows
    (fav_colour, fav_pattern, fav_shape) against item-factor rows (colour,
    pattern, shape), row by row.

    v1: ``taste_match`` (colour, pattern and shape in equal thirds). v2:
    ``text_share * colour_score + (1 - text_share) * [print == favourite
    print]``: the colour (named by the title for ``title_colour_rate`` of the
    items) carries ``text_share`` of the weight, the print that no text names
    the rest; the silhouette is the category's and carries none."""
    t, f = np.asarray(tastes), np.asarray(factors)
    if p.world == "v1":
        return taste_match(t[:, 0], t[:, 1], t[:, 2], f[:, 0], f[:, 1], f[:, 2])
    return p.text_share * colour_score(t[:, 0], f[:, 0]) + (1.0 - p.text_share) * (t[:, 1] == f[:, 1])


def colour_score(fav_colour: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """1 for the favourite hue, ``COLOUR_NEIGHBOUR_CREDIT`` for its two wheel neighbours, else 0."""
    n_col = len(COLOURS)
    d = np.abs(np.asarray(colour) - np.asarray(fav_colour)) % n_col
    d = np.minimum(d, n_col - d)  # circular hue distance in palette steps
    return np.where(d == 0, 1.0, np.where(d == 1, COLOUR_NEIGHBOUR_CREDIT, 0.0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    """Zero-padded sequential ids ("e0000000042") as an object array of str.
    Built digit by digit in numpy: a Python f-string loop over ~5M rows takes seconds."""
    if n and n > 10 ** width:
        raise ValueError(f"{n} ids do not fit in {width} digits")
    buf = np.empty((n, len(prefix) + width), dtype=np.uint8)
    buf[:, :len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    k = np.arange(n, dtype=np.int64)
    for d in range(width):
        buf[:, len(prefix) + width - 1 - d] = 48 + (k // 10 ** d) % 10
    return buf.view(f"S{buf.shape[1]}").ravel().astype(str).astype(object)


def _validate(p: MarketplaceParams) -> None:
    if p.n_users < 1 or p.n_days < 1 or p.items_per_page < 1 or p.image_size < 8:
        raise ValueError("n_users, n_days, items_per_page must be >= 1 and image_size >= 8")
    if p.n_items < len(CATEGORIES):
        raise ValueError(f"n_items must be >= {len(CATEGORIES)} (one per category)")
    if p.pages_per_session < 1 or p.sessions_per_user_day < 0:
        raise ValueError("pages_per_session must be >= 1 and sessions_per_user_day >= 0")
    if not 0.0 <= p.query_rate <= 1.0:
        raise ValueError("query_rate must be in [0, 1]")
    if p.image_format.lower() not in ("png", "jpeg", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {p.image_format!r}")
    for name in ("bad_null_keys", "bad_unknown_items", "bad_duplicate_events", "bad_images"):
        if getattr(p, name) < 0:
            raise ValueError(f"{name} must be >= 0")
    if p.bad_images > p.n_items:
        raise ValueError("bad_images exceeds n_items")


# --------------------------------------------------------------------------- generation

def _make_items(p: MarketplaceParams, rng: np.random.Generator, img_seed: np.random.SeedSequence,
                start_ns: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = p.n_items
    n_cat = len(CATEGORIES)
    shares = np.array([c.share for c in CATEGORIES])
    cat = rng.choice(n_cat, size=n, p=shares / shares.sum())
    cat[:n_cat] = np.arange(n_cat)  # every category has at least one item
    v2 = p.world == "v2"
    colour = rng.integers(len(COLOURS), size=n)
    pattern = rng.integers(len(PATTERNS), size=n)
    shape = rng.integers(len(SHAPES), size=n)
    if v2:  # the silhouette is the category's: said by the category, never a taste
        shape = np.asarray(CATEGORY_SILHOUETTE, dtype=np.int64)[cat]
    # Zipf over a random rank *within the category*: every category gets the
    # same head/tail profile, so category CTRs differ only by the click model
    key = rng.random(n)
    order = np.lexsort((key, cat))
    rank = np.empty(n, dtype=np.int64)
    starts = np.searchsorted(cat[order], np.arange(n_cat))
    rank[order] = np.arange(n) - starts[cat[order]] + 1
    popularity = rank.astype(np.float64) ** -ZIPF_EXPONENT
    med = np.array([c.price_median for c in CATEGORIES])[cat]
    sig = np.array([c.price_sigma for c in CATEGORIES])[cat]
    price = np.round(med * np.exp(sig * rng.standard_normal(n)), 2)
    # last update 1-180 days before the first day, second resolution
    age_s = rng.integers(86400, 180 * 86400, size=n)
    updated_at = (start_ns - age_s * 1_000_000_000).astype("datetime64[ns]")
    brand = rng.integers(len(_BRANDS), size=n)
    adj = rng.integers(len(_ADJECTIVES), size=n)
    noun = rng.integers(5, size=n)
    named = np.zeros(n, dtype=bool)
    release_day = np.zeros(n, dtype=np.int64)
    if v2:
        # drawn after v1's streams, so v1 items are unchanged
        named = rng.random(n) < p.title_colour_rate
        new = rng.random(n) < p.new_item_share
        new[:len(CATEGORIES)] = False  # every category keeps an item shown before the last day
        release_day[new] = p.n_days - 1
        # a new item is listed 1-6 h before the last day starts
        listed = start_ns + (p.n_days - 1) * 86_400 * 1_000_000_000 - rng.integers(3600, 6 * 3600, size=n) * 1_000_000_000
        updated_at = np.where(new, listed, updated_at.astype(np.int64)).astype("datetime64[ns]")
    colour_word = [COLOURS[c][0] + " " if m else "" for c, m in zip(colour, named)]
    titles = [f"{_BRANDS[b]} {w}{_ADJECTIVES[a]} {CATEGORIES[c].nouns[k % len(CATEGORIES[c].nouns)]}"
              for b, w, a, c, k in zip(brand, colour_word, adj, cat, noun)]
    # ids deliberately sparse and offset: code must never assume dense 0..n-1 ids
    item_id = (100_000 + np.arange(n, dtype=np.int64) * 7).astype(np.int64)
    fmt = p.image_format.lower()
    # one seed per item: an image depends only on (seed, item index), so the
    # rendering (the slow part at scale) can be split across workers unchanged
    backdrops = p.brand_backdrops if not v2 else p.nuisance > 0
    images = [render_item_image(int(colour[i]), int(pattern[i]), int(shape[i]), p.image_size,
                                np.random.default_rng(ss), fmt,
                                backdrop=int(brand[i]) if backdrops else None,
                                nuisance=p.nuisance if v2 else None)
              for i, ss in enumerate(img_seed.spawn(n))]
    cat_names = np.array([c.name for c in CATEGORIES], dtype=object)[cat]
    items = pd.DataFrame({
        "item_id": item_id,
        "category": cat_names,
        "title": np.array(titles, dtype=object),
        "price": price.astype(np.float64),
        "image": np.array(images, dtype=object),
        "updated_at": updated_at,
    })
    factors = pd.DataFrame({
        "item_id": item_id,
        "category": cat_names,
        "colour": colour.astype(np.int64),
        "pattern": pattern.astype(np.int64),
        "shape": shape.astype(np.int64),
        "backdrop": (brand if backdrops else np.full(n, -1)).astype(np.int64),  # -1: plain grey
        "brand": brand.astype(np.int64),
        "colour_in_title": named,
        "release_day": release_day,       # first day the item can be shown (0: from the start)
        "popularity": popularity,
    })
    return items, factors


def _make_users(p: MarketplaceParams, rng: np.random.Generator) -> pd.DataFrame:
    n, n_cat = p.n_users, len(CATEGORIES)
    fav_colour = rng.integers(len(COLOURS), size=n)
    fav_pattern = rng.integers(len(PATTERNS), size=n)
    fav_shape = rng.integers(len(SHAPES), size=n)
    # interests: 85% of the mass on 2-3 favourite categories, rest by share
    shares = np.array([c.share for c in CATEGORIES])
    shares = shares / shares.sum()
    k_fav = rng.integers(2, 4, size=n)
    order = np.argsort(rng.random((n, n_cat)), axis=1)  # random category order per user
    is_fav = np.zeros((n, n_cat), dtype=bool)
    np.put_along_axis(is_fav, order, np.arange(n_cat)[None, :] < k_fav[:, None], axis=1)
    raw = rng.gamma(2.0, 1.0, size=(n, n_cat)) * is_fav  # Dirichlet(2) over the favourites
    interest = 0.85 * raw / raw.sum(axis=1, keepdims=True) + 0.15 * shares[None, :]
    bias = rng.normal(0.0, USER_BIAS_SD, size=n)
    user_id = (5_000_000 + np.arange(n, dtype=np.int64) * 3).astype(np.int64)
    return pd.DataFrame({
        "user_id": user_id,
        "fav_colour": fav_colour.astype(np.int64),
        "fav_pattern": fav_pattern.astype(np.int64),
        "fav_shape": fav_shape.astype(np.int64),
        "category_interest": [[float(x) for x in row] for row in interest],
        "user_bias": bias,
    })


def _sample_pages(p: MarketplaceParams, rng: np.random.Generator, interest: np.ndarray,
                  item_cat: np.ndarray, log_pop: np.ndarray, start_ns: int,
                  release_day: np.ndarray) -> dict[str, np.ndarray]:
    """Sessions -> pages -> (page x slot) item indices, all vectorised. A page
    of day d shows only items with ``release_day <= d``."""
    n_users, n_days, n_cat = p.n_users, p.n_days, len(CATEGORIES)
    # sessions per user-day
    k = np.minimum(rng.poisson(p.sessions_per_user_day, size=n_users * n_days), MAX_SESSIONS_PER_DAY)
    ud_user = np.repeat(np.arange(n_users), n_days)
    ud_day = np.tile(np.arange(n_days), n_users)
    s_user, s_day, s_k = np.repeat(ud_user, k), np.repeat(ud_day, k), np.repeat(k, k)
    n_sess = len(s_user)
    s_j = np.arange(n_sess) - np.repeat(np.cumsum(k) - k, k)  # index of the session within its day
    # one session per equal slot of the day; start early enough in the slot
    # that the longest session (12 pages x 10 min) ends >= 1 h before the next slot
    slot = 86400.0 / np.maximum(s_k, 1)
    s_start = np.floor(s_j * slot + rng.random(n_sess) * np.maximum(slot - 3 * 3600.0, 0.0)).astype(np.int64)
    # pages per session, gaps of 1-10 minutes
    m = np.minimum(1 + rng.poisson(p.pages_per_session - 1.0, size=n_sess), MAX_PAGES_PER_SESSION)
    pg_sess = np.repeat(np.arange(n_sess), m)
    n_pages = len(pg_sess)
    first = np.repeat(np.cumsum(m) - m, m)
    gap = rng.integers(PAGE_GAP_S[0], PAGE_GAP_S[1] + 1, size=n_pages)
    gap[np.arange(n_pages) == first] = 0
    cs = np.cumsum(gap)
    offset = cs - cs[first]
    pg_user = s_user[pg_sess]
    pg_sec = s_day[pg_sess].astype(np.int64) * 86400 + s_start[pg_sess] + offset
    pg_ts = start_ns + pg_sec * 1_000_000_000
    # page category from the user's interests (inverse CDF)
    cum = np.cumsum(interest, axis=1)
    u = rng.random(n_pages) * cum[pg_user, -1]
    pg_cat = np.minimum((u[:, None] > cum[pg_user]).sum(axis=1), n_cat - 1)
    is_query = rng.random(n_pages) < p.query_rate
    query_word = rng.integers(5, size=n_pages)
    # chronological page order (ties by user) so request ids follow time
    order = np.lexsort((pg_user, pg_ts))
    pg_user, pg_ts, pg_cat = pg_user[order], pg_ts[order], pg_cat[order]
    pg_day = s_day[pg_sess][order]
    is_query, query_word = is_query[order], query_word[order]
    # items: sequential popularity sampling without replacement per page
    kpp = p.items_per_page
    slots = np.full((n_pages, kpp), -1, dtype=np.int64)
    releases = np.unique(release_day)
    for c in range(n_cat):
        for j, d in enumerate(releases):  # v1: one group (everything from day 0), as before
            cat_items = np.flatnonzero((item_cat == c) & (release_day <= d))
            d_next = releases[j + 1] if j + 1 < len(releases) else np.iinfo(np.int64).max
            rows = np.flatnonzero((pg_cat == c) & (pg_day >= d) & (pg_day < d_next))
            if len(rows) and len(cat_items):
                slots[rows, :min(kpp, len(cat_items))] = cat_items[
                    _sample_without_replacement(rng, np.exp(log_pop[cat_items]), len(rows), kpp)]
    return {"user": pg_user, "ts": pg_ts, "cat": pg_cat, "day": pg_day, "is_query": is_query,
            "query_word": query_word, "slots": slots}


def _sample_without_replacement(rng: np.random.Generator, weights: np.ndarray, n_rows: int,
                                k: int) -> np.ndarray:
    """(n_rows, min(k, len(weights))) local indices, each row drawn one by one
    with probability proportional to `weights` among the not-yet-drawn ones.

    Why not Gumbel top-k over the whole category: that costs rows x items
    random numbers (~1e9 at the large setting). Drawing with replacement and
    skipping repeats is the same process, and 4k draws per row almost always
    give k distinct items. A row that got only j < k keeps those j (a valid
    start of the process) and takes the rest by exact Gumbel top-(k-j) over
    the items it has not drawn yet; tiny categories (k >= n) take that path
    with j = 0."""
    n = len(weights)
    k = min(k, n)
    out = np.empty((n_rows, k), dtype=np.int64)
    prefix = np.full((n_rows, k), -1, dtype=np.int64)  # distinct draws so far, in order
    n_pre = np.zeros(n_rows, dtype=np.int64)
    if k < n:
        cdf = np.cumsum(weights / weights.sum())
        draws = np.minimum(np.searchsorted(cdf, rng.random((n_rows, 4 * k)) * cdf[-1], side="right"), n - 1)
        # first occurrence of each value in its row (a stable sort keeps draw order)
        order = np.argsort(draws, axis=1, kind="stable")
        srt = np.take_along_axis(draws, order, axis=1)
        first_sorted = np.ones_like(srt, dtype=bool)
        first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
        first = np.empty_like(first_sorted)
        np.put_along_axis(first, order, first_sorted, axis=1)
        # move the first occurrences to the front, in draw order
        front = np.argsort(~first, axis=1, kind="stable")[:, :k]
        n_pre = np.minimum(first.sum(axis=1), k)
        col = np.arange(k)[None, :]
        prefix = np.where(col < n_pre[:, None], np.take_along_axis(draws, front, axis=1), -1)
    done = n_pre == k
    out[done] = prefix[done]
    rest = np.flatnonzero(~done)
    lw = np.log(weights)
    chunk = max(1, int(2e7 // n))
    for a in range(0, len(rest), chunk):
        r = rest[a:a + chunk]
        e = rng.standard_exponential((len(r), n))
        keys = lw[None, :] - np.log(np.maximum(e, 1e-300))  # -log(Exp(1)) is Gumbel
        pre, j = prefix[r], n_pre[r]
        rr, cc = np.nonzero(pre >= 0)
        keys[rr, pre[rr, cc]] = -np.inf  # already drawn: never again
        top = np.argsort(-keys, axis=1, kind="stable")[:, :k]  # descending key = draw order
        col = np.arange(k)[None, :]
        fill = np.take_along_axis(top, np.maximum(col - j[:, None], 0), axis=1)
        out[r] = np.where(col < j[:, None], pre, fill)
    return out


def generate_marketplace(params: MarketplaceParams) -> Marketplace:
    """Generate items, impressions and the hidden truth for `params` (deterministic per seed)."""
    p = params
    _validate(p)
    streams = np.random.SeedSequence(p.seed).spawn(6)
    rng_items, _, rng_users, rng_pages, rng_clicks, rng_bad = (np.random.default_rng(s) for s in streams)
    start = pd.Timestamp(p.start_date)
    if start.tzinfo is not None:  # naive timestamps below mean UTC
        start = start.tz_convert("UTC").tz_localize(None)
    start_ns = int(start.value)

    items, factors = _make_items(p, rng_items, streams[1], start_ns)
    users = _make_users(p, rng_users)
    cat_index = {c.name: i for i, c in enumerate(CATEGORIES)}
    item_cat = factors["category"].map(cat_index).to_numpy(np.int64)
    log_pop = np.log(factors["popularity"].to_numpy())
    interest = np.array(users["category_interest"].tolist(), dtype=np.float64)

    pages = _sample_pages(p, rng_pages, interest, item_cat, log_pop, start_ns,
                          factors["release_day"].to_numpy(np.int64))
    slots = pages["slots"]
    n_pages, kpp = slots.shape
    valid = slots >= 0
    imp_page = np.repeat(np.arange(n_pages), valid.sum(axis=1))
    imp_item = slots[valid]                    # row-major: page by page, slot order
    imp_pos = np.nonzero(valid)[1].astype(np.int32)
    imp_user = pages["user"][imp_page]
    imp_cat = pages["cat"][imp_page]
    n_imp = len(imp_item)
    # pop_z: log popularity standardised over the *exposures* (not the
    # catalogue): exposure is itself popularity-weighted, so a catalogue
    # z-score would give shown items a large positive offset (top items z ~ 7)
    # and base_logit would no longer set the typical shown item's CTR.
    lp_shown = log_pop[imp_item]
    pop_z = (log_pop - lp_shown.mean()) / (lp_shown.std() or 1.0) if n_imp else log_pop * 0.0

    # click model (vectorised over impressions)
    fc = factors[["colour", "pattern", "shape"]].to_numpy()
    ut = users[["fav_colour", "fav_pattern", "fav_shape"]].to_numpy()
    tm = look_match(p, ut[imp_user], fc[imp_item])
    vw = np.array([c.visual_weight for c in CATEGORIES])[imp_cat]
    visual_term = p.w_visual * vw * tm
    logit_wo = (p.base_logit + p.w_popularity * pop_z[imp_item]
                - p.w_position * np.log1p(imp_pos) + users["user_bias"].to_numpy()[imp_user])
    p_click = _sigmoid(logit_wo + visual_term)
    p_wo = _sigmoid(logit_wo)
    clicked = rng_clicks.random(n_imp) < p_click

    # queries: a category word per search page, None for recommendations
    nouns = [c.nouns for c in CATEGORIES]
    page_query = np.array([nouns[c][w % len(nouns[c])] if q else None
                           for c, w, q in zip(pages["cat"], pages["query_word"], pages["is_query"])],
                          dtype=object)
    item_ids = factors["item_id"].to_numpy()
    user_ids = users["user_id"].to_numpy()
    impressions = pd.DataFrame({
        "event_id": _ids("e", n_imp, 10),
        "request_id": _ids("r", n_pages, 9)[imp_page],
        "user_id": user_ids[imp_user].astype(np.int64),
        "query": page_query[imp_page],
        "item_id": item_ids[imp_item].astype(np.int64),
        "position": imp_pos,
        "event_ts": pages["ts"][imp_page].astype("datetime64[ns]"),
        "clicked": clicked,
    })

    visual_cat = vw >= 0.5
    stats = {
        "n_impressions": float(n_imp),
        "n_pages": float(n_pages),
        "n_clicks": float(clicked.sum()),
        "ctr": float(clicked.mean()) if n_imp else float("nan"),
        "expected_ctr": float(p_click.mean()) if n_imp else float("nan"),
        "visual_click_share": float((p_click.sum() - p_wo.sum()) / p_click.sum()) if n_imp else float("nan"),
        "ctr_visual_categories": float(clicked[visual_cat].mean()) if visual_cat.any() else float("nan"),
        "ctr_nonvisual_categories": float(clicked[~visual_cat].mean()) if (~visual_cat).any() else float("nan"),
        "items_shown_share": float(len(np.unique(imp_item)) / p.n_items),
        "median_impressions_per_shown_item": float(np.median(np.bincount(imp_item)[np.unique(imp_item)]))
        if n_imp else float("nan"),
        "new_items": float((factors["release_day"] > 0).sum()),
        "new_item_share_of_last_day": float(
            (factors["release_day"].to_numpy()[imp_item][pages["day"][imp_page] == p.n_days - 1] > 0).mean())
        if n_imp and (pages["day"] == p.n_days - 1).any() else float("nan"),
    }

    impressions, items, injected = inject_bad_rows(p, rng_bad, impressions, items)
    return Marketplace(items=items, impressions=impressions, item_factors=factors,
                       user_tastes=users, injected=injected, stats=stats)
