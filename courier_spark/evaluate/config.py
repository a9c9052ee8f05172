"""Typed view of the free-form ``evaluate`` config section.

Read it with ``load_evaluate_config(cfg)`` (a thin wrapper over
``courier_spark.config.section(cfg, "evaluate", EvaluateConfig)``); unknown
keys are errors there, bad values are errors here (``__post_init__``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, CourierConfig, section

IMAGE_FEATURES = ("none", "vector", "simscore", "cluster_id")
MODEL_KINDS = ("dnn", "lgbm")
GAUC_WEIGHTINGS = ("impressions", "uniform")


@dataclass
class DnnConfig:
    """The downstream DNN CTR model (paper appendix), sized for 2 CPU cores.

    Defaults train the default data's 53k CTR train rows in about 10 s on one CPU thread."""
    # 4 epochs with a cosine decay, measured on the default data (baseline AUC,
    # 4 seeds): 2 epochs constant 0.7319 +- 0.0014, 3 constant 0.7330, 4 constant
    # 0.7282 +- 0.0047, 4 cosine 0.7366 +- 0.0014.
    epochs: int = 4
    batch_size: int = 512
    lr: float = 3e-3
    # "cosine": the learning rate decays to 0 over the run; "constant": fixed.
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-6
    emb_dim: int = 16
    # Hash bucket counts (index 0 is reserved for padding / missing).
    item_buckets: int = 50_000
    user_buckets: int = 50_000
    token_buckets: int = 4_096
    cluster_buckets: int = 8_192
    max_title_tokens: int = 12
    max_position: int = 64
    price_buckets: int = 16
    history_len: int = 20            # last N clicked item ids through attention
    attn_heads: int = 2
    vector_proj_dim: int = 16
    # Hidden widths of the MLP; the output layer makes it len+1 layers (5 by default).
    mlp_hidden: list = field(default_factory=lambda: [128, 64, 32, 16])
    dropout: float = 0.0
    # Item / user / category statistics (smoothed CTR and log impressions,
    # out-of-fold on the train rows), as in the paper's towers. Without them
    # the DNN must learn popularity from hashed IDs in 2 epochs and sits far
    # below the LightGBM screen (measured AUC 0.711 vs 0.750 on the default data).
    statistics: bool = True
    stat_folds: int = 5
    stat_prior_weight: float = 20.0
    # torch intra-op threads. 1 by default: the model's ops are small, and with
    # 2 OpenMP threads every op waits for the slower core - measured 10-15x
    # slower per step when the other core is busy (Spark, another job).
    num_threads: int = 1
    log_every_s: float = 10.0        # progress line cadence inside an epoch

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "emb_dim", "item_buckets", "user_buckets",
                     "token_buckets", "cluster_buckets", "max_title_tokens", "max_position",
                     "price_buckets", "history_len", "attn_heads", "vector_proj_dim", "num_threads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"evaluate.dnn.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.emb_dim % self.attn_heads:
            raise ConfigError(f"evaluate.dnn.emb_dim ({self.emb_dim}) must be divisible by "
                              f"evaluate.dnn.attn_heads ({self.attn_heads})")
        if not isinstance(self.mlp_hidden, (list, tuple)) or not self.mlp_hidden \
                or any(int(h) < 1 for h in self.mlp_hidden):
            raise ConfigError(f"evaluate.dnn.mlp_hidden must be a non-empty list of widths, "
                              f"got {self.mlp_hidden!r}")
        self.mlp_hidden = [int(h) for h in self.mlp_hidden]
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"evaluate.dnn.dropout must be within [0, 1), got {self.dropout!r}")
        if self.lr <= 0:
            raise ConfigError(f"evaluate.dnn.lr must be > 0, got {self.lr!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"evaluate.dnn.lr_schedule must be cosine or constant, got {self.lr_schedule!r}")


@dataclass
class LgbmConfig:
    """LightGBM screen on tabular features."""
    num_boost_round: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    # Train rows get out-of-fold target statistics from this many folds so a
    # row's own label never enters its features.
    stat_folds: int = 5
    # Additive smoothing of CTR statistics towards the global train CTR.
    stat_prior_weight: float = 20.0
    # 1 by default for the same reason as DnnConfig.num_threads (measured:
    # 0.7 s with 1 thread vs 9-85 s with 2 on a busy 2-core machine).
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.num_boost_round < 1 or self.num_leaves < 2 or self.min_data_in_leaf < 1:
            raise ConfigError("evaluate.lgbm: num_boost_round >= 1, num_leaves >= 2, "
                              "min_data_in_leaf >= 1 are required")
        if self.stat_folds < 2:
            raise ConfigError(f"evaluate.lgbm.stat_folds must be >= 2, got {self.stat_folds!r}")
        if self.stat_prior_weight < 0:
            raise ConfigError("evaluate.lgbm.stat_prior_weight must be >= 0")


# Pre-training methods the pipeline compares downstream (training.train.METHOD_PRESETS).
DEFAULT_METHODS = ["courier", "courier_no_ucs", "simclr", "supervised"]


@dataclass
class EvaluateConfig:
    # Methods pushed through embed -> cluster -> features -> CTR models. The
    # serving method (embed.method) comes from the main stages; the
    # `comparisons` stage trains, embeds and clusters the others.
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    # Methods evaluated in every image-feature way (vector, simscore,
    # cluster_id); the others only as cluster_id (the paper's main way).
    all_ways_methods: list = field(default_factory=lambda: ["courier"])
    model_kinds: list = field(default_factory=lambda: ["dnn", "lgbm"])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    main_model: str = "dnn"           # the model whose numbers are the headline metrics
    baseline: str = "baseline"        # variant name the lifts are measured against
    gauc_weighting: str = "impressions"
    # A difference is "real" when |mean diff| > real_k * pooled seed std.
    real_k: float = 2.0
    dnn: DnnConfig = field(default_factory=DnnConfig)
    lgbm: LgbmConfig = field(default_factory=LgbmConfig)

    def __post_init__(self) -> None:
        from training.train import METHOD_PRESETS
        for key in ("methods", "all_ways_methods"):
            val = getattr(self, key)
            val = [val] if isinstance(val, str) else list(val)
            bad = [m for m in val if m not in METHOD_PRESETS]
            if bad:
                raise ConfigError(f"evaluate.{key}: unknown method(s) {bad}; known: {sorted(METHOD_PRESETS)}")
            if len(set(val)) != len(val):
                raise ConfigError(f"evaluate.{key} lists a method twice: {val}")
            setattr(self, key, val)
        if isinstance(self.model_kinds, str):
            self.model_kinds = [self.model_kinds]
        bad = [k for k in self.model_kinds if k not in MODEL_KINDS]
        if bad or not self.model_kinds:
            raise ConfigError(f"evaluate.model_kinds must be a non-empty subset of {list(MODEL_KINDS)}, "
                              f"got {self.model_kinds!r}")
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        try:
            self.seeds = [int(s) for s in self.seeds]
        except (TypeError, ValueError):
            raise ConfigError(f"evaluate.seeds must be a list of ints, got {self.seeds!r}") from None
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"evaluate.seeds must be non-empty and distinct, got {self.seeds!r}")
        if self.main_model not in MODEL_KINDS:
            raise ConfigError(f"evaluate.main_model must be one of {list(MODEL_KINDS)}, got {self.main_model!r}")
        if self.gauc_weighting not in GAUC_WEIGHTINGS:
            raise ConfigError(f"evaluate.gauc_weighting must be one of {list(GAUC_WEIGHTINGS)}, "
                              f"got {self.gauc_weighting!r}")
        if self.real_k <= 0:
            raise ConfigError(f"evaluate.real_k must be > 0, got {self.real_k!r}")


def load_evaluate_config(cfg: CourierConfig) -> EvaluateConfig:
    """The typed ``evaluate`` section of a loaded CourierConfig."""
    return section(cfg, "evaluate", EvaluateConfig)
