"""UR-DMU checkpoint import, the model directory format and pavad-score, against the reference."""
import json
import math
import sys

import jax
import numpy as np
import pytest
import torch
from scipy.special import erf

from pavad_jax import checkpoint, import_urdmu, score
from urdmu_torch_reference import WSAD

D = 1024


def reference_model(seed: int, a_slots: int = 60, n_slots: int = 60) -> WSAD:
    """The torch reference with random weights (LayerNorms perturbed so they matter)."""
    torch.manual_seed(seed)
    model = WSAD(D, a_slots, n_slots).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".norm." in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def numpy_test_forward(sd: dict, x: np.ndarray) -> np.ndarray:
    """The reference's test forward from its state_dict (torch layouts), in float64 numpy."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    b, n, t, d = x.shape
    h = x.reshape(b * n, t, d).astype(np.float64)
    w, bias = sd["embedding.conv_1.0.weight"], sd["embedding.conv_1.0.bias"]
    padded = np.pad(h, ((0, 0), (1, 1), (0, 0)))
    h = sum(padded[:, k:k + t] @ w[:, :, k].T for k in range(3)) + bias
    h = np.maximum(h, 0)

    def layer_norm(u, prefix):
        mean, var = u.mean(-1, keepdims=True), u.var(-1, keepdims=True)
        return (u - mean) / np.sqrt(var + 1e-5) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def linear(u, prefix, bias=True):
        return u @ sd[prefix + ".weight"].T + (sd[prefix + ".bias"] if bias else 0)

    pos = np.arange(1, t + 1)
    local = np.exp(-np.abs(pos[None] - pos[:, None]) / math.e)
    local = local / local.sum(-1)[None, :]
    for i in range(2):
        p = f"selfatt.layers.{i}"
        qkvt = linear(layer_norm(h, f"{p}.0.norm"), f"{p}.0.fn.to_qkv", bias=False)
        q, k, v, tt = (u.reshape(b * n, t, 4, 128).transpose(0, 2, 1, 3) for u in np.split(qkvt, 4, -1))
        dots = q @ k.transpose(0, 1, 3, 2) / math.sqrt(128)
        att = np.exp(dots - dots.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        out = np.concatenate([att @ v, local @ tt], -1).transpose(0, 2, 1, 3).reshape(b * n, t, 1024)
        h = linear(out, f"{p}.0.fn.to_out.0") + h
        f = linear(layer_norm(h, f"{p}.1.norm"), f"{p}.1.fn.net.0")
        f = 0.5 * f * (1 + erf(f / math.sqrt(2)))
        h = linear(f, f"{p}.1.fn.net.3") + h
    memory = 0
    for bank in ("Amemory", "Nmemory"):
        m = sd[f"{bank}.memory_block"]
        att = 1 / (1 + np.exp(-(h @ m.T) / math.sqrt(512)))
        memory = memory + linear(att @ m, "encoder_mu.0")
    z = np.maximum(linear(np.concatenate([h, memory], -1), "cls_head.mlp.0"), 0)
    s = 1 / (1 + np.exp(-linear(z, "cls_head.mlp.2")))
    return s.reshape(b, n, t).mean(1)


def jit_scores(detector):
    """detector.scores, jitted (eager NNX calls are slow), fp32 matmuls on any backend."""
    scores = jax.jit(lambda x, mask=None: detector.scores(x, mask))

    def call(x, mask=None):
        with jax.default_matmul_precision("highest"):
            return scores(x, mask)

    return call


def save_and_import(tmp_path, model: WSAD, wrap: bool = False):
    """torch.save the model's state_dict, run pavad-import-urdmu, load the result."""
    state = model.state_dict()
    if wrap:  # as DataParallel + a training script's wrapper would save it
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "urdmu.pkl"
    torch.save(state, path)
    assert import_urdmu.main([str(path), "--output", str(tmp_path / "model")]) == 0
    return checkpoint.load_model(tmp_path / "model")


def test_import_round_trip_matches_numpy_reference(tmp_path):
    model = reference_model(0, a_slots=20, n_slots=37)
    detector, config = save_and_import(tmp_path, model, wrap=True)
    assert (config.model.a_slots, config.model.n_slots, config.model.feature_dim) == (20, 37, D)
    x = np.random.default_rng(0).normal(size=(2, 2, 23, D)).astype(np.float32)
    expected = numpy_test_forward({k: v.numpy() for k, v in model.state_dict().items()}, x)
    np.testing.assert_allclose(np.asarray(jit_scores(detector)(x)), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(torch reference, imported detector, model dir) for the default 60/60-slot UR-DMU."""
    tmp_path = tmp_path_factory.mktemp("imported")
    model = reference_model(1)
    detector, _ = save_and_import(tmp_path, model)
    return model, detector, tmp_path / "model"


LENGTHS = {"small": (1, 3, 17, 40), "full": (1, 2, 3, 16, 17, 100, 300)}  # each length compiles anew


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_acceptance_imported_checkpoint_matches_torch_reference(imported, size):
    """Test-mode scores within 1e-4 of the torch reference for T = 1..300 (full; 1..40 small) and 1 or 10 crops.

    Ten crops: one unpadded call per length. One crop: all lengths in one padded batch with a
    mask, so the evaluation path (bucketed, padded) is held to the reference as well.
    """
    model, detector, _ = imported
    lengths = LENGTHS[size]
    scores = jit_scores(detector)
    rng = np.random.default_rng(1)
    worst = 0.0
    padded = np.zeros((len(lengths), max(lengths), D), np.float32)
    expected_single = []
    for row, t in enumerate(lengths):
        x = rng.normal(size=(1, 10, t, D)).astype(np.float32)
        padded[row, :t] = rng.normal(size=(t, D))
        with torch.no_grad():
            expected = model(torch.from_numpy(x))["frame"].numpy()
            expected_single.append(model(torch.from_numpy(padded[row:row + 1, :t]))["frame"].numpy()[0])
        got = np.asarray(scores(x))
        assert got.shape == (1, t)
        worst = max(worst, float(np.abs(got - expected).max()))
    mask = np.arange(max(lengths))[None] < np.array(lengths)[:, None]
    got_single = np.asarray(scores(padded, mask))
    for row, t in enumerate(lengths):
        worst = max(worst, float(np.abs(got_single[row, :t] - expected_single[row]).max()))
        assert np.all(got_single[row, t:] == 0)
    assert worst < 1e-4, worst


def test_parameter_count_matches_reference():
    assert sum(p.numel() for p in reference_model(0).parameters()) == 6_492_929


def test_import_names_unknown_and_missing_keys():
    arrays = {k: v.numpy() for k, v in reference_model(0).state_dict().items()}
    arrays["extra.weight"] = np.zeros(3, np.float32)
    del arrays["encoder_var.0.bias"]
    with pytest.raises(ValueError, match=r"unknown keys \['extra.weight'\].*missing keys \['encoder_var.0.bias'\]"):
        import_urdmu.detector_from_state_dict(arrays)


def test_import_rejects_a_wrong_shape_and_a_wrong_slot_flag(tmp_path):
    arrays = {k: v.numpy() for k, v in reference_model(0).state_dict().items()}
    arrays["encoder_mu.0.weight"] = arrays["encoder_mu.0.weight"][:, :100]
    with pytest.raises(ValueError, match="encoder_mu.0.weight"):
        import_urdmu.detector_from_state_dict(arrays)
    path = tmp_path / "urdmu.pth"
    torch.save(reference_model(0).state_dict(), path)
    with pytest.raises(SystemExit, match="--a-slots 100"):
        import_urdmu.main([str(path), "--output", str(tmp_path / "m"), "--a-slots", "100"])


def test_pavad_score_writes_scores_and_checks_the_feature_dim(imported, tmp_path, capsys):
    model, _, model_dir = imported
    features = np.random.default_rng(2).normal(size=(3, 40, D)).astype(np.float32)
    np.save(tmp_path / "video.npy", features)
    out = tmp_path / "scores" / "video_scores.npy"
    assert score.main(["--checkpoint", str(model_dir), "--features", str(tmp_path / "video.npy"),
                       "--output", str(out)]) == 0
    scores = np.load(out)
    with torch.no_grad():
        expected = model(torch.from_numpy(features[None]))["frame"].numpy()[0]
    assert scores.shape == (40,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    printed = capsys.readouterr().out
    assert "T=40" in printed and f"{int(np.argmax(scores))} (" in printed

    np.save(tmp_path / "small.npy", features[0, :, :100])
    with pytest.raises(SystemExit, match=r"small\.npy.*D=100.*feature_dim=1024"):
        score.main(["--checkpoint", str(model_dir), "--features", str(tmp_path / "small.npy")])
    with pytest.raises(SystemExit, match="neither a model export"):
        score.main(["--checkpoint", str(tmp_path), "--features", str(tmp_path / "video.npy")])


def test_import_without_torch_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(SystemExit, match=r"pip install -e \.\[gen\]"):
        import_urdmu.main([str(tmp_path / "urdmu.pkl"), "--output", str(tmp_path / "model")])


def test_an_imported_checkpoint_evaluates_on_a_ucf_layout_test_set(annotations_dir, tmp_path):
    """pavad-import-urdmu output + `pavad-data import urdmu` test split -> pavad-eval, no run folder."""
    from sklearn.metrics import roc_auc_score

    from pavad_jax import evaluate
    from pavad_jax.data import cli as data_cli, importers
    from pavad_jax.shards import ShardSet

    ucf = annotations_dir / "ucf"
    lengths = {name: int(t) for name, t in (line.split() for line in importers.read_list(ucf / "test_num_segments.txt"))}
    chosen = ["RoadAccidents021_x264", "Shooting037_x264", "Normal_Videos_345_x264", "Normal_Videos_881_x264"]
    lines = [line for line in importers.read_list(ucf / "UCF_Test.list")
             if importers.basename(line).rsplit("__", 1)[0] in chosen]
    assert len(lines) == 40  # 10 crops each, in the list's order
    (tmp_path / "Test.list").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    features = {}
    for line in lines:
        name = importers.basename(line)
        video = name.rsplit("__", 1)[0]
        features.setdefault(video, []).append(rng.random((lengths[video], D), dtype=np.float32))
        np.save(tmp_path / name, features[video][-1])
    assert data_cli.main(["import", "urdmu", "--list", str(tmp_path / "Test.list"), "--features", str(tmp_path),
                          "--dataset", "ucf", "--gt", str(ucf / "UCF_Annotation.txt"),
                          "--output", str(tmp_path / "ucf" / "test"), "--dtype", "float32"]) == 0

    model = reference_model(3)
    detector, _ = save_and_import(tmp_path, model)
    evaluate.main(["--checkpoint", str(tmp_path / "model"), "--data", str(tmp_path / "ucf"), "--videos", "1"])
    metrics = json.loads((tmp_path / "model" / "eval" / "metrics.json").read_text())

    # The reference: each video's 10 crops through the PyTorch model, segment scores x 16 frames.
    test = ShardSet(tmp_path / "ucf" / "test")
    labels, scores = [], []
    for i in range(len(test)):
        record = test[i]
        video = record.id.rsplit("/", 1)[-1]
        with torch.no_grad():
            s = model(torch.from_numpy(np.stack(features[video])[None]))["frame"].numpy()[0]
        scores.append(np.repeat(s, 16))
        labels.append(record.frame_labels[: 16 * len(s)])
    assert metrics["videos"] == 4
    assert metrics["auc"] == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(scores)), abs=1e-5)
