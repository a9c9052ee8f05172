"""Run by tests/test_feast.py as a separate process (a consumer's own Feast
program, in the platform's venv, where Feast is installed): apply the repository
`courier feast` wrote, materialize it into Redis, then write what Feast
returns for a consumer's events (get_historical_features) and for item ids
(get_online_features) as JSON.

    python feast_check.py REPO EVENTS_PARQUET ITEM_IDS_JSON OUT_JSON
"""
from __future__ import annotations

import datetime as dt
import json
import math
import sys

import pandas as pd
from feast import FeatureStore

FEATURES = ["courier_cluster_id", "distance", "model_version", "centroid_version", "item_updated_at"]


def plain(v):
    """JSON-able and comparable: NaN/NaT/None -> None, timestamps -> UTC ISO text, numpy -> Python."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if hasattr(v, "tolist"):          # numpy arrays (array features)
        return [plain(x) for x in v.tolist()]
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, (pd.Timestamp, dt.datetime)):
        ts = pd.Timestamp(v)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.isoformat()
    return v.item() if hasattr(v, "item") else v


def main(repo: str, events_path: str, ids_path: str, out_path: str) -> None:
    store = FeatureStore(repo_path=repo)
    refs = [f"item_visual:{f}" for f in FEATURES]
    events = pd.read_parquet(events_path)
    events["event_ts"] = pd.to_datetime(events["event_ts"], utc=True)
    hist = store.get_historical_features(entity_df=events, features=refs).to_df()
    # Everything up to now: Feast writes each item's latest row to Redis.
    store.materialize(start_date=dt.datetime(1970, 1, 2, tzinfo=dt.timezone.utc),
                      end_date=dt.datetime.now(dt.timezone.utc))
    ids = json.loads(open(ids_path).read())
    online = store.get_online_features(features=refs, entity_rows=[{"item_id": i} for i in ids]).to_dict()
    # The offline-only view, for events asked after their values were computed.
    imp = pd.DataFrame({"event_id": ["e1", "e2", "e3"], "event_timestamp": [pd.Timestamp.now(tz="UTC")] * 3})
    imp_refs = [f"impression_visual:{f}" for f in ("sim_scores", "hist_cluster_ids", "target_cluster_id")]
    impressions = store.get_historical_features(entity_df=imp, features=imp_refs).to_df()
    out = {
        "impressions": [{k: plain(v) for k, v in row.items() if k != "event_timestamp"}
                        for row in impressions.to_dict("records")],
        "historical": [{k: plain(v) for k, v in row.items()} for row in hist.to_dict("records")],
        "online": {str(i): {f: plain(online[f][n]) for f in FEATURES} for n, i in enumerate(online["item_id"])},
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:5])
