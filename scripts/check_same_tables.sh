#!/usr/bin/env bash
# Behaviour unchanged by a restructuring: two commits write the same tables.
#   bash scripts/check_same_tables.sh OLD_REV [NEW_REV (default HEAD)] [--demo] [--set k=v ...]
# Both commits run generate -> samples on the same seed and settings (sample
# tables compared); the new commit trains one model, and each commit then runs
# embed -> cluster -> features from that same model (training on 2 processes
# need not be bit-identical between runs; the feature code is what changed).
# Default settings: the schema's defaults with a tiny world and 20 training steps;
# --demo: the main command's own world (conf/demo.yaml as is), 20 training steps.
# Two environments (a dependency upgrade): COURIER_OLD_PYTHON / COURIER_NEW_PYTHON
# name each commit's interpreter (default: this checkout's .venv for both); the
# new one compares (a newer Delta reads the older one's tables).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY_OLD="${COURIER_OLD_PYTHON:-$REPO/.venv/bin/python}"
PY="${COURIER_NEW_PYTHON:-$REPO/.venv/bin/python}"
OLD="$1"; shift
NEW="HEAD"; if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then NEW="$1"; shift; fi
DEMO=0; if [ "${1:-}" = "--demo" ]; then DEMO=1; shift; fi
SETS=(--set synthetic.n_users=60 --set synthetic.n_items=120 --set synthetic.n_days=5 --set synthetic.image_size=32
      --set synthetic.sessions_per_user_day=1.0 --set spark.shuffle_partitions=4 --set train.steps=20
      --set train.checkpoint_every=10 --set "train.categories=[]" --set train.init=random --set cluster.k=8 "$@")
[ "$DEMO" = 1 ] && SETS=(--config "$REPO/conf/demo.yaml" --set train.steps=20 --set train.checkpoint_every=10 "$@")
W="$(mktemp -d)"; trap 'git -C "$REPO" worktree remove --force "$W/old" >/dev/null 2>&1 || true;
                     git -C "$REPO" worktree remove --force "$W/new" >/dev/null 2>&1 || true' EXIT
git -C "$REPO" worktree add -f --detach "$W/old" "$OLD" >/dev/null
git -C "$REPO" worktree add -f --detach "$W/new" "$NEW" >/dev/null
run() {   # that commit's code, in that commit's environment
  local py="$PY"; [ "$1" = old ] && py="$PY_OLD"
  (cd "$W/$1" && shift && "$py" -m courier_spark.cli "$@" "${SETS[@]}")
}
run new pipeline --root "$W/A" --until train
cp -r "$W/A" "$W/B"
run old pipeline --root "$W/C" --until samples
run old pipeline --root "$W/B" --from embed --until features
run new pipeline --root "$W/A" --from embed --until features
# Both comparisons run whatever the first finds; the exit status says whether any table differed.
status=0
echo "== sample tables: $NEW (A) vs $OLD (C)"
"$PY" "$REPO/scripts/compare_roots.py" "$W/A" "$W/C" bronze/items bronze/impressions quarantine/items \
  quarantine/impressions silver/items silver/impressions silver/pretrain_samples silver/ctr_samples || status=1
echo "== embeddings, centroids and features from one model: $NEW (A) vs $OLD (B)"
"$PY" "$REPO/scripts/compare_roots.py" "$W/A" "$W/B" gold/item_embeddings gold/centroids \
  feature_store/item_visual feature_store/impression_visual || status=1
exit "$status"
