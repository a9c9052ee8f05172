"""The evidence bench: the paper's table 5 on world v2, pre-trained on all
visual categories and on one (transfer), with encoder seeds, and the
ablations at one seed; every fit appended to a resumable ledger.

The plan (``PLAN``: settings, methods, seeds, runs, ways, scopes and the
order of work) is fixed here and written to ``bench/results/evidence_plan.json``
by ``preregister``, with data checks that involve no method's result, and
committed before ``run`` trains anything. ``run`` walks the plan in order and
skips every model and fit already in the ledger, so a stopped bench resumes
where it stopped (a model whose fits are all in the ledger is never trained
again; a training cut short resumes from its checkpoint). ``status`` prints
what is left and an estimate of its time; ``tables`` writes the tables of
``docs/evidence.md`` from the ledger alone.

    .venv/bin/python bench/bench_evidence.py preregister --base data/evidence
    nohup .venv/bin/python bench/bench_evidence.py run --base data/evidence > data/evidence.log 2>&1 &
    .venv/bin/python bench/bench_evidence.py status
    .venv/bin/python bench/bench_evidence.py tables --write docs/evidence.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _runs import REPO, courier, train_embed_cluster  # noqa: E402  (bench/ is the script dir)
from evidence_ledger import (SETTING_FREE_METHODS, append_lines, coverage, done_fits, fits_frame,
                             lift_table, minus_table, read_ledger, scope_masks)

BENCH_VERSION = 1
LEDGER = REPO / "bench" / "results" / "evidence_ledger.jsonl"
PLAN_FILE = REPO / "bench" / "results" / "evidence_plan.json"

VISUAL = ["womens_clothing", "mens_clothing", "shoes", "bags", "home_decor"]   # visual_weight 1.0 in the world
TABLE5 = ["courier", "simclr", "supervised", "supervised_image", "generic", "random_init", "courier_shuffled"]
ABLATIONS = ["courier_no_ucs", "courier_no_contrast", "courier_no_recon", "courier_no_neg_pv",
             "courier_proj_head", "courier_hinge", "courier_multihead"]
PLAN = {
    "bench_version": BENCH_VERSION,
    # World v2 as pre-registered (bench/results/preregistration.md): the schema's
    # synthetic defaults, seed 7; one dataset root serves every setting.
    "world": "v2",
    "world_sets": [],
    # The budget rule (docs/budget-rule.md): the schema's train defaults
    # (800 steps x 64 page views x 2 workers, generic-trunk start) for every method.
    "budget_sets": ["train.init=generic", "train.steps=800", "train.batch_size=64", "train.num_proc=2"],
    # The transfer setting keeps the same budget (the rule's steps x global
    # batch), fixed before any method ran there, although its pre-training rows
    # are fewer (checks.v2_transfer.passes_at_budget): one budget per method
    # whatever the rows, as the paper pre-trains once and evaluates everywhere.
    # Each model's held-out loss curve goes into its ledger line.
    "budget_same_in_every_setting": True,
    "settings": {
        # As before: pre-training on the five visual categories (conf/demo.yaml's list).
        "v2_all": {"categories": VISUAL, "restrict_histories": False},
        # The paper's transfer: women's clothing only, page views and histories.
        "v2_transfer": {"categories": ["womens_clothing"], "restrict_histories": True},
    },
    "visual_categories": VISUAL,
    "table5_methods": TABLE5,
    "ablation_methods": ABLATIONS,
    # Methods whose model does not depend on the pre-training rows: one model
    # (under the first setting) whose fits are scored for every setting's
    # scopes; generic has no encoder seed.
    "setting_free_methods": [m for m in SETTING_FREE_METHODS if m != "baseline"],   # generic, random_init
    "seedless_methods": ["generic"],
    "encoder_seeds": [0, 1, 2],
    "kmeans_seeds": [1234, 1, 2],      # run j: k-means seed kmeans_seeds[j], CTR seed j
    "ways": ["cluster_id", "simscore"],
    "model_kinds": ["dnn", "lgbm"],
    "k": 64,
    # Order of work: (setting, encoder seed, methods); the first blocks give
    # table 5 at seed 0 in both settings, then the ablations, then seeds 1, 2.
    "blocks": [
        ["v2_all", 0, TABLE5], ["v2_transfer", 0, TABLE5], ["v2_all", 0, ABLATIONS],
        ["v2_all", 1, TABLE5], ["v2_transfer", 1, TABLE5],
        ["v2_all", 2, TABLE5], ["v2_transfer", 2, TABLE5],
    ],
}
# Minutes, for the estimate before the ledger has its own (2 cores, docs/evidence.md).
DEFAULT_TRAIN_MIN = {"simclr": 33.0, "generic": 1.5, "random_init": 0.5}
DEFAULT_TRAIN_MIN_OTHER = 7.0
DEFAULT_FIT_S = 20.0


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def world_root(base: str) -> str:
    return os.path.join(base, PLAN["world"])


def setting_sets(setting: str, seed: int) -> list[str]:
    s = PLAN["settings"][setting]
    sets = [*PLAN["world_sets"], *PLAN["budget_sets"], f"train.categories=[{','.join(s['categories'])}]",
            f"train.restrict_histories={str(s['restrict_histories']).lower()}", f"train.seed={seed}"]
    return [x for kv in sets for x in ("--set", kv)]


def fit_setting(setting: str, method: str) -> str:
    """Where a method's model lives: setting-free methods' (and the baseline's) under the first setting."""
    first = next(iter(PLAN["settings"]))
    return first if method in SETTING_FREE_METHODS else setting


def scored_settings(setting: str, method: str) -> list[str]:
    """The settings one fit's predictions are scored for: a setting-free method's
    predictions are the same in every setting, but its scopes are not (``seen``
    is the setting's pre-training categories), so each setting gets its own rows."""
    return list(PLAN["settings"]) if method in SETTING_FREE_METHODS else [setting]


def fit_lines(records: list[dict]) -> list[dict]:
    """One line per fit done (its scope-all line; a setting-free fit, scored
    for every setting, counted once: under its model's setting)."""
    return [r for r in records if r.get("record", "fit") == "fit" and r.get("scope") == "all"
            and r["setting"] == fit_setting(r["setting"], r["method"])]


def fit_seed(method: str, seed: int) -> int:
    return -1 if method in PLAN["seedless_methods"] else seed


def needed_fits(setting: str, seed: int, method: str, done: set) -> list[tuple]:
    """(way, kind, run, settings whose rows are missing) of one model's fits not yet in the ledger."""
    e = fit_seed(method, seed)
    out = []
    for w in PLAN["ways"]:
        for k in PLAN["model_kinds"]:
            for j in range(len(PLAN["kmeans_seeds"])):
                lack = [st for st in scored_settings(setting, method) if (st, method, w, k, e, j) not in done]
                if lack:
                    out.append((w, k, j, lack))
    return out


def baseline_needed(done: set) -> list[tuple]:
    """(kind, run, settings whose rows are missing) of the baseline's fits."""
    out = []
    for k in PLAN["model_kinds"]:
        for j in range(len(PLAN["kmeans_seeds"])):
            lack = [st for st in PLAN["settings"] if (st, "baseline", "none", k, None, j) not in done]
            if lack:
                out.append((k, j, lack))
    return out


# --------------------------------------------------------------------------- status

def todo(records: list[dict]) -> list[tuple[str, int, str, int]]:
    """(setting, seed, method, missing fits) in plan order, models already covered left out."""
    done, out, seen = done_fits(records), [], set()
    for setting, seed, methods in PLAN["blocks"]:
        for m in methods:
            key = (fit_setting(setting, m), m, fit_seed(m, seed))
            if key in seen:
                continue
            seen.add(key)
            n = len(needed_fits(setting, seed, m, done))
            if n:
                out.append((setting, seed, m, n))
    return out


def estimate_minutes(records: list[dict], left: list[tuple]) -> float:
    models = [r for r in records if r.get("record") == "model"]
    fits = [r["seconds"] for r in fit_lines(records) if r.get("seconds")]
    fit_s = float(np.median(fits)) if fits else DEFAULT_FIT_S
    trained = {(r["setting"], r["method"], r["encoder_seed"]) for r in models}
    total = 0.0
    for setting, seed, m, n in left:
        if (fit_setting(setting, m), m, fit_seed(m, seed)) not in trained:   # else only its fits are left
            own = [r["seconds"] / 60 for r in models if r["method"] == m and r.get("seconds")]
            total += float(np.median(own)) if own else DEFAULT_TRAIN_MIN.get(m, DEFAULT_TRAIN_MIN_OTHER)
        total += n * fit_s / 60
    return total


def status(_: argparse.Namespace) -> None:
    records = read_ledger(LEDGER)
    left = todo(records)
    n_fits = len(fit_lines(records))
    n_models = sum(1 for r in records if r.get("record") == "model")
    spent = sum(r.get("seconds", 0) for r in records if r.get("record") == "model") + \
        sum(r.get("seconds", 0) for r in fit_lines(records))
    print(f"[evidence] ledger {LEDGER.relative_to(REPO)}: {n_models} models, {n_fits} fits "
          f"({spent / 3600:.1f} h of work recorded)")
    print(f"[evidence] left: {len(left)} models' fits, about {estimate_minutes(records, left) / 60:.1f} h on 2 cores")
    done = done_fits(records)
    for setting, seed, m, n in left:
        lack = sorted({st for *_, sts in needed_fits(setting, seed, m, done) for st in sts})
        scored = f", scored for {', '.join(lack)}" if lack != [setting] else ""
        print(f"  {setting} seed {seed}: {m} ({n} fits{scored})")


# --------------------------------------------------------------------------- run

def _state(root: str) -> dict:
    p = Path(root) / "_evidence_state.json"
    return json.loads(p.read_text()) if p.exists() else {"samples": False, "models": {}}


def _save_state(root: str, state: dict) -> None:
    p = Path(root) / "_evidence_state.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(p)


class Evaluator:
    """The root's CTR frames, read once, and one fit per call (the evaluate stage's models)."""

    def __init__(self, root: str) -> None:
        from courier_spark.core.config import DEMO_CONFIG, load_config
        from courier_spark.evaluate.ctr_frames import catalogue_items, ctr_base_frame
        from courier_spark.core.paths import TablePaths
        from courier_spark.core.spark import get_spark
        self.cfg = load_config(DEMO_CONFIG, [])
        self.spark = get_spark(self.cfg.spark)
        self.paths = TablePaths.for_root(root)
        base = ctr_base_frame(self.spark, self.paths).toPandas()
        base["label"] = base["label"].astype(np.int64)
        base["hist_item_ids"] = [list(h) if h is not None else [] for h in base["hist_item_ids"]]
        self.items = catalogue_items(self.spark, self.paths)
        self.train = base[base["split"] == "train"].reset_index(drop=True)
        self.test = base[base["split"] == "test"].reset_index(drop=True)

    def fit(self, train, test, feature: str, kind: str, seed: int,
            settings: list[str]) -> tuple[dict[str, list[dict]], float]:
        """Train on ``train``, score ``test`` -> for each of ``settings``, one
        record per non-empty scope (its pre-training categories decide the
        scopes); and the seconds."""
        from courier_spark.evaluate.ctr_dnn import score_dnn, train_dnn
        from courier_spark.evaluate.lgbm import score_lgbm, train_lgbm
        from courier_spark.evaluate.metrics import auc, gauc
        t0 = time.perf_counter()
        ecfg = self.cfg.evaluate
        if kind == "dnn":
            s = score_dnn(train_dnn(train, feature, ecfg.dnn, seed, items=self.items), test)
        else:
            s = score_lgbm(train_lgbm(train, feature, seed, ecfg.lgbm, items=self.items), test)
        y = test["label"].to_numpy()
        out: dict[str, list[dict]] = {}
        for st in settings:
            seen = PLAN["settings"][st]["categories"]
            out[st] = []
            for scope, mask in scope_masks(test["category"], seen, PLAN["visual_categories"]).items():
                if mask.sum() == 0 or y[mask].min() == y[mask].max():
                    continue
                out[st].append({"scope": scope, "auc": auc(y[mask], s[mask]),
                                "gauc": gauc(y[mask], s[mask], test["request_id"][mask], ecfg.gauc_weighting).value,
                                "rows": int(mask.sum())})
        return out, time.perf_counter() - t0

    def embeddings(self, model_version: str):
        from courier_spark.features.embed import embeddings_to_numpy, read_embeddings
        return embeddings_to_numpy(read_embeddings(self.spark, self.paths.item_embeddings, model_version))

    def with_sim_scores(self, model_version: str):
        """(train, test) with the SimScore column of ``model_version`` (the feature library's own function)."""
        import pandas as pd
        from pyspark.sql import functions as F

        from courier_spark.features.embed import read_embeddings
        from courier_spark.evaluate.frames import stack_fixed
        from courier_spark.features.assignment import similarity_features
        from courier_spark.core.tables import read_table
        emb = read_embeddings(self.spark, self.paths.item_embeddings, model_version)
        ctr = read_table(self.spark, self.paths.ctr_samples)
        no_clusters = emb.select("item_id", F.lit(-1).alias("cluster_id"))
        k = self.cfg.features.k
        sims = similarity_features(ctr, emb, no_clusters, k, broadcast_embeddings=True).select(
            "event_id", "sim_scores").toPandas()
        mat = stack_fixed(sims["sim_scores"], k, np.float32, np.nan)
        mat = np.vstack([mat, np.full((1, k), np.nan, np.float32)])   # last row: an event without SimScores
        at = pd.Index(sims["event_id"]).get_indexer
        out = []
        for df in (self.train, self.test):
            d = df.copy()
            d["sim_scores"] = list(mat[at(d["event_id"])])   # -1 -> the all-NaN row
            out.append(d)
        return out[0], out[1]


def _record(setting: str, method: str, mv: str | None, way: str, kind: str, seed, j: int, scope_rec: dict,
            seconds: float, seen: list[str]) -> dict:
    return {"record": "fit", "setting": setting, "world": PLAN["world"], "pretrain_categories": seen,
            "method": method, "model_version": mv, "way": way, "model_kind": kind, "encoder_seed": seed,
            "run": j, "kmeans_seed": PLAN["kmeans_seeds"][j] if way == "cluster_id" else None, "ctr_seed": j,
            **scope_rec, "seconds": round(seconds, 1), "commit": commit(), "bench_version": BENCH_VERSION,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run(args: argparse.Namespace) -> None:
    if not PLAN_FILE.exists():
        sys.exit("[evidence] no pre-registered plan: run `bench_evidence.py preregister` and commit it first")
    if json.loads(PLAN_FILE.read_text())["plan"] != json.loads(json.dumps(PLAN)):
        sys.exit(f"[evidence] PLAN differs from the pre-registered {PLAN_FILE.relative_to(REPO)}; "
                 "a plan is never moved after methods ran (bump BENCH_VERSION and pre-register anew)")
    root = world_root(args.base)
    state = _state(root)
    t_start = time.perf_counter()
    deadline = t_start + args.max_hours * 3600 if args.max_hours else None
    if not state["samples"]:
        courier("pipeline", "--root", root, "--until", "samples", *setting_sets("v2_all", 0))
        state["samples"] = True
        _save_state(root, state)
    ev = None
    for setting, seed, methods in PLAN["blocks"]:
        for m in methods:
            if deadline and time.perf_counter() > deadline:
                print("[evidence] --max-hours reached; stopping (resume with the same command)", flush=True)
                return
            records = read_ledger(LEDGER)
            done = done_fits(records)
            missing = needed_fits(setting, seed, m, done)
            if not missing:
                continue
            st, e = fit_setting(setting, m), fit_seed(m, seed)
            key = f"{st}/{m}/{e}"
            mv = state["models"].get(key)
            if mv is None:
                print(f"[evidence] {setting} seed {seed}: training {m}", flush=True)
                t0 = time.perf_counter()
                mv = train_embed_cluster(root, [m], setting_sets(st, max(e, 0)))[m]
                state["models"][key] = mv
                _save_state(root, state)
                append_lines(LEDGER, [{"record": "model", "setting": st, "method": m, "encoder_seed": e,
                                       "model_version": mv, "seconds": round(time.perf_counter() - t0, 1),
                                       **_train_metrics(root, mv),
                                       "commit": commit(), "bench_version": BENCH_VERSION,
                                       "ts": time.strftime("%Y-%m-%dT%H:%M:%S")}])
            ev = ev or Evaluator(root)
            _baseline(ev, done)
            _method_fits(ev, m, mv, e, missing)
        print(f"[evidence] block {setting} seed {seed} done; {(time.perf_counter() - t_start) / 60:.0f} min so far",
              flush=True)
    print("[evidence] plan complete", flush=True)


def _train_metrics(root: str, model_version: str) -> dict:
    """What the artifact recorded of its training: rows, losses, held-out curve, speed."""
    from courier_spark.core.paths import TablePaths
    from training.artifact import load_artifact
    method, version = model_version.split("/", 1)
    m = load_artifact(TablePaths.for_root(root).models, method, version).metrics
    keep = ("steps", "pretrain_rows", "heldout_rows", "initial_loss", "final_loss", "heldout_loss",
            "images_per_s", "co_click_cosine_centred", "random_pair_cosine_centred")
    return {"train": {k: m[k] for k in keep if k in m}}


def _scored_lines(by_setting: dict[str, list[dict]], method: str, mv: str | None, way: str, kind: str, seed,
                  j: int, seconds: float) -> list[dict]:
    return [_record(st, method, mv, way, kind, seed, j, r, seconds, PLAN["settings"][st]["categories"])
            for st, recs in by_setting.items() for r in recs]


def _baseline(ev: Evaluator, done: set) -> None:
    for kind, j, lack in baseline_needed(done):
        by_setting, sec = ev.fit(ev.train, ev.test, "none", kind, j, lack)
        append_lines(LEDGER, _scored_lines(by_setting, "baseline", None, "none", kind, None, j, sec))
        first = by_setting[lack[0]][0]
        print(f"[evidence] baseline {kind} run {j} ({', '.join(lack)}): AUC {first['auc']:.4f} ({sec:.0f}s)",
              flush=True)
        done.update((st, "baseline", "none", kind, None, j) for st in lack)


def _method_fits(ev: Evaluator, m: str, mv: str, e: int, missing: list[tuple]) -> None:
    from courier_spark.evaluate.cluster_variants import kmeans_clusters, with_cluster_ids
    ids = x = sims = None
    clusters: dict[int, tuple] = {}
    for way, kind, j, lack in missing:
        if way == "cluster_id":
            if j not in clusters:
                if ids is None:
                    ids, x = ev.embeddings(mv)
                cl = kmeans_clusters(ids, x, PLAN["k"], PLAN["kmeans_seeds"][j])
                clusters[j] = (with_cluster_ids(ev.train, cl), with_cluster_ids(ev.test, cl))
            tr, te = clusters[j]
        else:
            sims = sims or ev.with_sim_scores(mv)
            tr, te = sims
        by_setting, sec = ev.fit(tr, te, way, kind, j, lack)
        append_lines(LEDGER, _scored_lines(by_setting, m, mv, way, kind, e, j, sec))
        first = by_setting[lack[0]][0]
        print(f"[evidence] {', '.join(lack)} {m} ({mv}) {way} {kind} seed {e} run {j}: AUC {first['auc']:.4f} "
              f"GAUC {first['gauc']:.4f} ({sec:.0f}s)", flush=True)


# --------------------------------------------------------------------------- pre-registration

def preregister(args: argparse.Namespace) -> None:
    """Data checks that involve no method's result, and the plan, written for commit."""
    from pyspark.sql import functions as F

    from courier_spark.core.config import DEMO_CONFIG, load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.core.tables import read_table
    from training.pretrain_rows import restrict_history_clicks, restrict_to_categories
    root = world_root(args.base)
    state = _state(root)
    if not state["samples"]:
        courier("pipeline", "--root", root, "--until", "samples", *setting_sets("v2_all", 0))
        state["samples"] = True
        _save_state(root, state)
    spark = get_spark(load_config(DEMO_CONFIG, []).spark)
    p = TablePaths.for_root(root)
    samples, items = read_table(spark, p.pretrain_samples), read_table(spark, p.silver_items)
    checks: dict = {}
    for name, s in PLAN["settings"].items():
        rows = restrict_to_categories(samples, items, s["categories"])
        if s["restrict_histories"]:
            rows = restrict_history_clicks(rows, items, s["categories"])
        n = rows.count()
        # Page views an encoder sees at the budget: steps x global batch, against what there is.
        budget = 800 * 64 * 2
        checks[name] = {"pretrain_page_views": n, "passes_at_budget": round(budget / max(n, 1), 1)}
    test = read_table(spark, p.ctr_samples).filter(F.col("split") == "test")
    by_cat = {r["category"]: (r["n"], r["clicks"]) for r in
              test.groupBy("category").agg(F.count("*").alias("n"), F.sum("label").alias("clicks")).collect()}
    checks["test_rows_by_category"] = {c: {"rows": int(n), "clicks": int(k)} for c, (n, k) in sorted(by_cat.items())}
    for name, s in PLAN["settings"].items():
        import pandas as pd
        cats = pd.Series([c for c, (n, _) in by_cat.items() for _ in range(int(n))])
        checks[name]["test_rows_by_scope"] = {k: int(v.sum()) for k, v in
                                             scope_masks(cats, s["categories"], PLAN["visual_categories"]).items()}
    out = {"plan": PLAN, "checks": checks, "commit": commit(), "ts": time.strftime("%Y-%m-%dT%H:%M:%S")}
    PLAN_FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(checks, indent=1))
    print(f"[evidence] wrote {PLAN_FILE.relative_to(REPO)}: commit it before `run`")


# --------------------------------------------------------------------------- tables

MARK_BEGIN, MARK_END = "<!-- evidence-tables:begin -->", "<!-- evidence-tables:end -->"


def render_tables(records: list[dict]) -> str:
    df = fits_frame(records)
    models = [r for r in records if r.get("record") == "model"]
    fit_s = sum(r.get("seconds", 0) for r in fit_lines(records))
    lines = [f"Generated by `bench/bench_evidence.py tables` from `bench/results/evidence_ledger.jsonl` "
             f"({len(models)} models, {len(fit_lines(records))} fits; "
             f"{sum(r.get('seconds', 0) for r in models) / 3600:.1f} h of training and {fit_s / 3600:.1f} h of "
             f"CTR fits recorded on 2 cores). Cells: lift over the baseline in % (relative), mean ± sd over the "
             f"paired runs (encoder seed x k-means/CTR run), two-sided paired t-test p, n runs; bold: p < 0.05. "
             f"\"–\": not run yet.", ""]
    scopes = {"v2_all": ["all", "low_visual"], "v2_transfer": ["seen", "unseen_visual", "low_visual", "all"]}
    for setting in PLAN["settings"]:
        cats = ", ".join(PLAN["settings"][setting]["categories"])
        for way in PLAN["ways"]:
            lines.append(f"### {setting} (pre-trained on {cats}), {way.replace('_', ' ')}: lift over the baseline")
            lines.append("")
            lines.append("Coverage: " + coverage(df, setting, PLAN["table5_methods"], way) + ".")
            lines.append("")
            for scope in scopes[setting]:
                lines.append(f"Scope **{scope}**:")
                lines.append("")
                lines.append(lift_table(df, setting, PLAN["table5_methods"], way, [scope]))
                lines.append("")
            lines.append(f"COURIER minus each rival ({way.replace('_', ' ')}, lift points, paired), "
                         f"scope {scopes[setting][0]}:")
            lines.append("")
            lines.append(minus_table(df, setting, [m for m in PLAN["table5_methods"] if m != "courier"], way,
                                     [scopes[setting][0]]))
            lines.append("")
    lines.append("### Ablations (v2_all, encoder seed 0)")
    lines.append("")
    for way in PLAN["ways"]:
        lines.append(f"{way.replace('_', ' ')}, scope all:")
        lines.append("")
        lines.append(lift_table(df, "v2_all", ["courier", *PLAN["ablation_methods"]], way, ["all"]))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def tables(args: argparse.Namespace) -> None:
    text = render_tables(read_ledger(LEDGER))
    if not args.write:
        print(text)
        return
    doc = Path(args.write)
    body = doc.read_text()
    if MARK_BEGIN not in body or MARK_END not in body:
        sys.exit(f"[evidence] {doc} has no {MARK_BEGIN} ... {MARK_END} section to fill")
    head, rest = body.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    doc.write_text(head + MARK_BEGIN + "\n" + text + MARK_END + tail)
    print(f"[evidence] wrote the tables into {doc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preregister", help="data checks + the plan -> bench/results/evidence_plan.json")
    p.add_argument("--base", required=True, help="folder for the world's dataset root")
    p.set_defaults(fn=preregister)
    r = sub.add_parser("run", help="train and fit what the ledger lacks, in plan order (resumable)")
    r.add_argument("--base", required=True)
    r.add_argument("--max-hours", type=float, default=None, help="stop starting new models after this long")
    r.set_defaults(fn=run)
    sub.add_parser("status", help="what is left and an estimate of its time").set_defaults(fn=status)
    t = sub.add_parser("tables", help="the docs tables from the ledger")
    t.add_argument("--write", help="markdown file with the evidence-tables markers to fill")
    t.set_defaults(fn=tables)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
