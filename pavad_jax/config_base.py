"""Every default a config starts from, and the helpers config files use.

Config files (configs/*.py) import only ml_collections and this module, so reading a config
never imports jax, flax, grain or orbax (a test checks it). The model, loss and data modules
read their defaults from here; docs/model.md and docs/architecture.md explain the fields.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from pavad_jax.config_loader import parse_variants  # noqa: F401  (config files import it from here)

METHODS = ("pavad", "urdmu", "gvvad")
# The detectors config.model.name chooses (pavad_jax/models/registry.py builds them).
MODEL_NAMES = ("urdmu", "rtfm", "lap", "tevad")
GV_MODES = ("none", "sample", "batch")  # GV-VAD's synthetic-sample loss scaling: off, Eq. 6, public code
POOL_POINTS = ("selfatt", "embedding")  # embeddings mean-pooled for L_DA
UPD_SPACES = ("raw", "normalized")  # loss.darm.upd_centers / upd_distance (docs/model.md, "Eq. 13")
# Metric that picks the best checkpoint (best/): frame AUC, sklearn's average precision, or
# UR-DMU's trapezoidal PR area.
SELECT_BY = {"auc": "auc", "ap": "average_precision", "ap_trapezoid": "ap_pr_trapezoid"}

# Detector-side ablations of PA-VAD's Table 5: which DARM terms are on.
# (domain alignment on, usage-aware update on); a term that is off also gets weight 0.
ABLATIONS = {
    "urdmu": (False, False),  # UR-DMU* alone (trained on pseudo anomalies)
    "da": (True, False),      # + domain alignment
    "upd": (False, True),     # + usage-aware update
    "darm": (True, True),     # + both (PA-VAD)
}


def default_data_config() -> ml_collections.ConfigDict:
    """The `config.data` fields every training config starts from (UR-DMU's values)."""
    c = ml_collections.ConfigDict()
    # Dataset folder holding <train_split>/ and <test_split>/, each a shard set or a folder of
    # shard sets (found recursively by manifest.json).
    c.dir = ""
    c.train_split = "train"
    c.test_split = "test"
    # The embedded benchmark: "" (use data.dir), "small" or "default"; built on first use.
    c.synthetic = ""
    c.synthetic_root = "~/.cache/pavad_jax"
    # T: every training video is resampled to this many segments (UR-DMU: 200).
    c.segments = 200
    # Videos per stream in one *global* batch (all hosts together); rows are ordered normal,
    # abnormal, pseudo-normal. UR-DMU splits the batch in halves, so normal == abnormal.
    # pseudo_normal > 0 only for runs that use pseudo-normal videos (0 = stream unused).
    c.batch = ml_collections.ConfigDict(dict(normal=64, abnormal=64, pseudo_normal=0))
    # What one training sample is: "crop" (the reference: every (video, crop) pair, an epoch is a
    # shuffled pass over crop sequences), "video" (a video, then one of its crops uniformly) or
    # "all_crops" (a video with all of its crops, features (B, crops, T, D): RTFM and LAP).
    c.sample_unit = "crop"
    # Keep only this many abnormal-stream videos (a fixed random subset drawn with data.seed;
    # PA-VAD Table 6's clip counts); 0 keeps all.
    c.abnormal_clips = 0
    # Which records feed the normal stream: "real" (PA-VAD, UR-DMU) or "any" (also pseudo).
    c.normal_source = "real"
    # Which records feed the abnormal stream: "pseudo" (PA-VAD trains on synthetic anomalies
    # only), "real" (the UR-DMU baseline) or "any" (GV-VAD mixes real and synthetic).
    c.abnormal_source = "pseudo"
    # Keep the pre-resampled training set on the device and sample inside the jitted step:
    # "auto" (when it fits device_budget_gb), True / "true", or False / "false".
    c.device_resident = config_dict.FieldReference("auto", field_type=object)
    # Largest pre-resampled training table (GiB, at data.table_dtype, one full copy per device)
    # that "auto" puts on the device; also capped at half of the device memory where JAX reports
    # it (on a CPU: a quarter of the RAM, shared by its simulated devices). UCF-Crime's 1610
    # videos x 10 crops at T=200, D=1024 take 13 GiB in float32, 6.5 GiB in (b)float16.
    c.device_budget_gb = 16.0
    # Storage of the resampled training features: "float32", "float16" or "bfloat16" (half the
    # memory; batches are cast back to float32). Both training paths round the same way.
    c.table_dtype = "float32"
    # Rows per evaluation batch in the shortest bucket; longer rows come fewer per batch (about
    # the same number of segments per batch), at least one.
    c.eval_batch_size = 16
    # Row lengths (segments) of evaluation batches: a video goes into a row of the smallest
    # bucket that holds it, and short videos share rows (packed, largest first, into the row
    # with the least room left). A video longer than every bucket gets a row of its own, padded
    # by at most eval_max_padding of its length (one compiled program per distinct row length).
    c.eval_buckets = (128, 512, 1024)
    c.eval_max_padding = 0.125
    # Memory (GiB) the scorer may use per device (XLA's estimates of the compiled programs in
    # flight); 0 = 10 % of the host memory on CPU, half of the device memory on accelerators.
    # Fewer crops per pass (eval_crop_chunk below) when all of them do not fit.
    c.eval_memory_gb = 0.0
    # Most crops scored in one pass of the scoring program (the largest divisor of the crop count
    # up to this that fits the memory budget); 0 = one on CPU (faster: a crop's activations stay
    # in cache), all on accelerators.
    c.eval_crop_chunk = 0
    # Evaluation batches scored at once, each on its own thread (0 = 2 on a one-device CPU mesh,
    # else 1; always 1 across several processes). Each gets eval_memory_gb / eval_concurrency.
    c.eval_concurrency = 0
    # grain worker processes for the training pipeline; 0 reads in this process (threads).
    # Worker processes need a `if __name__ == "__main__":` guard in the launching script.
    c.worker_count = 0
    # Threads that read and resample in this process, and batches prefetched ahead of the step
    # (each thread builds a whole batch, so at most min(threads, prefetch) are built at once).
    c.read_threads = 4
    c.prefetch_batches = 4
    # Seed of the training order (shuffles, crop choices, the abnormal_clips subset): the data
    # order depends on it alone (not on train.seed), so sweep members with other seeds see the
    # same batches.
    c.seed = 2022
    return c


def default_model_config() -> ml_collections.ConfigDict:
    """UR-DMU's architecture as the reference builds it for I3D features (D = 1024)."""
    return ml_collections.ConfigDict({
        "name": "urdmu",  # the detector (MODEL_NAMES): urdmu here; rtfm, lap, tevad start from model_defaults
        "feature_dim": 1024,
        "hidden": 512,
        "heads": 4,
        "depth": 2,
        "mlp_dim": 512,
        "cls_hidden": 128,
        "a_slots": 60,
        "n_slots": 60,
        "dropout": 0.5,
        # Compute dtype of the training forward's matmuls: "float32" or "bfloat16" (parameters,
        # optimiser state, accumulation, elementwise ops and losses stay float32; evaluation
        # scores in float32).
        "compute_dtype": "float32",
        # The reference's quirks, reproduced by default; False gives the evident intent.
        "quirks": {
            "local_attn_column_norm": True,  # A / A.sum(-1) divides [i, j] by row j's sum
            "kl_sum_over_time": True,  # KL summed over axis 1 (time), not over features
            # The reference's first commit (e0ac5f3) gathered anchor_new at the abnormal half's
            # top-k (A_index); commit 152c4dc fixed it to N_index. True trains as the first commit,
            # the code the published records (UCF 0.8697, XD AP 0.8166) were committed with.
            "anchor_at_abnormal_index": False,
        },
    })


def default_loss_config(method: str = "pavad") -> ml_collections.ConfigDict:
    """Loss weights (traced) and structural loss choices (static) for one of METHODS.

    pavad: UR-DMU + DARM (Table 8, UCF-Crime column); urdmu: the plain reference loss;
    gvvad: the reference loss with GV-VAD's per-sample synthetic scaling (Eq. 6, lambda 0.5).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    darm_on = method == "pavad"
    return ml_collections.ConfigDict({
        "weights": {
            "lambda1": 1.0 if darm_on else 0.0,  # weight of L_DA
            "lambda2": 0.1 if darm_on else 0.0,  # weight of L_upd
            "lambda_da": 0.1,  # gradient reversal strength (0.2 for SHT in Table 8)
            "lambda_dist": 0.01,  # weight of ||mean f_N - mean f_pseudoN||^2 inside L_DA
            "beta": 1.0,  # usage exponent of L_upd
            "tau": 0.1,  # softmax temperature of the slot assignment Q (not in the paper)
            "gv_lambda": 0.5,  # GV-VAD's synthetic-sample scale (Table III best)
        },
        "darm": {
            "domain_alignment": darm_on,  # compute L_DA (needs pseudo-normal rows in the batch)
            "usage_update": darm_on,  # compute L_upd
            "discriminator_hidden": (256,),  # hidden widths of the discriminator MLP
            "pool": "selfatt",  # embeddings mean-pooled for L_DA: "selfatt" or "embedding"
            "stop_grad_centers": True,  # mu_k carries no gradient (slots move, not features)
            "stop_grad_usage": True,  # the usage weights (u_bar / (u_k + eps))^beta carry none
            "usage_eps": 1e-6,  # epsilon in u_k + eps
            # Eq. 13's reading (docs/model.md, "Eq. 13"): mu_k over the unit embeddings Z~ of Eq. 10 and
            # slots compared with it by direction keep L_upd bounded; "raw" for both is Eq. 13 as
            # printed, whose target grows with the embeddings' norm and runs away on the main job.
            "upd_centers": "normalized",  # mu_k over Z~ ("normalized") or over the raw Z ("raw")
            "upd_distance": "normalized",  # ||m~_k - mu~_k||^2 ("normalized") or ||m_k - mu_k||^2 ("raw")
        },
        "gv": {
            "mode": "sample" if method == "gvvad" else "none",  # "none", "sample" or "batch"
            "learnable": False,  # lambda as a parameter (softplus), initialised at gv_lambda
        },
    })


def model_name(config: ml_collections.ConfigDict) -> str:
    """config.model.name (configs that predate it are UR-DMU), checked against MODEL_NAMES."""
    model = config.model if "model" in config else config
    name = model.get("name", "urdmu")
    if name not in MODEL_NAMES:
        raise ValueError(f"config.model.name = {name!r}: expected one of {MODEL_NAMES}")
    return name


def model_defaults(name: str) -> ml_collections.ConfigDict:
    """{model, loss} defaults of a detector: UR-DMU's here, RTFM's and LAP's from models/defaults_*.py."""
    from pavad_jax.models import defaults_lap, defaults_rtfm  # plain ConfigDicts, no jax

    if name == "urdmu":
        return ml_collections.ConfigDict({"model": default_model_config(), "loss": default_loss_config("urdmu")})
    builders = {"rtfm": defaults_rtfm.rtfm_config, "lap": defaults_lap.lap_config, "tevad": defaults_lap.tevad_config}
    if name not in builders:
        raise ValueError(f"config.model.name = {name!r}: expected one of {MODEL_NAMES}")
    return builders[name]()


def default_optim_config() -> ml_collections.ConfigDict:
    """Adam as torch.optim.Adam (weight decay coupled to the gradient), UR-DMU's values."""
    return ml_collections.ConfigDict(dict(learning_rate=1e-4, weight_decay=5e-5, b1=0.9, b2=0.999, eps=1e-8))


def default_train_config() -> ml_collections.ConfigDict:
    """The loop: steps, the intervals of its periodic actions, seed, devices, precision."""
    return ml_collections.ConfigDict(dict(
        steps=3000,
        # Optimiser steps per jitted call (lax.scan); > 1 when dispatch dominates. log_every,
        # eval_every and checkpoint_every must be multiples of it.
        steps_per_dispatch=1,
        eval_every=10,
        eval_after=0,  # evaluate only at steps > eval_after (GV-VAD's code: every 5 steps after step 50)
        checkpoint_every=100,
        log_every=10,
        keep_checkpoints=2,
        seed=2022,  # model initialisation, dropout and the UR sampling
        num_devices=0,  # devices in the data-parallel mesh; 0 = all (single process only)
        select_by="auc",  # the metric that picks best/: one of SELECT_BY
        # Matmul precision of evaluation and scoring: "highest" (full float32 on every
        # backend, so scores equal the reference's) or "default" (TF32 / bf16 passes).
        eval_precision="highest",
        # Piecewise-constant traced hyperparameters: ({"step": s, name: value, ...}, ...), each
        # applied from update s on (s a multiple of steps_per_dispatch, the first 0); names are
        # loss weights, learning_rate, weight_decay. A PBT winner's replay config sets it.
        hyper_schedule=(),
        # Identical copies of the run trained in one vmapped program (the first is the run): a
        # replay of a sweep member uses the member's program shape, so it matches bit for bit.
        program_members=1,
    ))


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all training configs; each file in configs/ overrides what differs."""
    config = ml_collections.ConfigDict()
    config.data = default_data_config()
    config.model = default_model_config()
    config.loss = default_loss_config()
    config.optim = default_optim_config()
    config.train = default_train_config()
    return config


def narrow_model(config: ml_collections.ConfigDict, *, feature_dim: int, hidden: int, slots: int,
                 heads: int | None = None) -> None:
    """Shrinks the UR-DMU (and discriminator) for `runlocal` variants that must run in seconds."""
    config.model.feature_dim = feature_dim
    config.model.hidden = hidden
    config.model.mlp_dim = hidden
    config.model.cls_hidden = hidden // 2
    config.model.a_slots = slots
    config.model.n_slots = slots
    if heads is not None:
        config.model.heads = heads
    config.loss.darm.discriminator_hidden = (hidden // 2,)


def apply_runlocal(config: ml_collections.ConfigDict, synthetic: str) -> None:
    """The `runlocal` variant of a UR-DMU config: the embedded `synthetic` set, 4 + 4 short
    sequences per step, a narrow model, 60 steps; seconds on a CPU."""
    config.data.synthetic = synthetic
    config.data.segments = 32
    config.data.batch.normal = 4
    config.data.batch.abnormal = 4
    config.data.eval_buckets = (64, 128)
    narrow_model(config, feature_dim=64, hidden=64, slots=16)
    config.optim.learning_rate = 1e-3
    config.train.steps = 60
    config.train.eval_every = 20
    config.train.checkpoint_every = 20


def apply_ablation(config: ml_collections.ConfigDict, words: set[str]) -> None:
    """Sets the DARM weights of the one Table 5 ablation named in `words` (if any)."""
    chosen = words & set(ABLATIONS)
    if len(chosen) > 1:
        raise ValueError(f"choose one ablation of {sorted(ABLATIONS)}, got {sorted(chosen)}")
    for name in chosen:
        domain_alignment, usage_update = ABLATIONS[name]
        config.loss.darm.domain_alignment = domain_alignment
        config.loss.darm.usage_update = usage_update
        if not domain_alignment:
            config.loss.weights.lambda1 = 0.0
            config.data.batch.pseudo_normal = 0  # the pseudo-normal stream only feeds L_DA
        if not usage_update:
            config.loss.weights.lambda2 = 0.0
