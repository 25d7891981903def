"""The evaluator's scheduling: programs compiled once across threads, batches scored concurrently."""
import threading

import jax
import numpy as np
import pytest

from pavad_jax import distributed, evaluate
from pavad_jax.config_base import default_data_config
from pavad_jax.data import pipeline
from pavad_jax.models import urdmu
from train_fixtures import DIM, tiny_config


def test_each_batch_shape_compiles_once_when_threads_ask_for_it_together(monkeypatch):
    detector = urdmu.URDMU(tiny_config("unused").model, rngs=urdmu.nnx.Rngs(0))
    graphdef, params, rest = evaluate.stacked_model(detector)
    scorer = evaluate.Scorer(graphdef)
    compiled = []
    compile_program = scorer._compile
    monkeypatch.setattr(scorer, "_compile", lambda key, *a: compiled.append(key) or compile_program(key, *a))
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 3, 24, DIM)).astype(np.float16) for _ in range(4)]
    ids = np.repeat(np.array([[1] * 20 + [0] * 4]), 2, axis=0).astype(np.int32)
    start = threading.Barrier(4)
    out = [None] * 4

    def score(i):
        start.wait()
        out[i] = np.asarray(scorer(params, rest, features[i], ids))

    threads = [threading.Thread(target=score, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(compiled) == 1
    for i in range(4):  # each thread got its own batch's scores
        direct = np.asarray(detector.scores(features[i][:, :, :20].astype(np.float32)))
        np.testing.assert_allclose(out[i][0, :, :20], direct, atol=1e-5)


def test_a_failed_compilation_reaches_every_thread_that_waits_for_it(monkeypatch):
    detector = urdmu.URDMU(tiny_config("unused").model, rngs=urdmu.nnx.Rngs(0))
    graphdef, params, rest = evaluate.stacked_model(detector)
    scorer = evaluate.Scorer(graphdef)
    monkeypatch.setattr(scorer, "_compile", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    features, ids = np.zeros((1, 3, 8, DIM), np.float16), np.ones((1, 8), np.int32)
    for _ in range(2):  # the second call finds the failed program, not a hang
        with pytest.raises(RuntimeError, match="out of memory"):
            scorer(params, rest, features, ids)


def _scored_chunk(scorer, params, rest, features, ids, budget=None) -> tuple[int, np.ndarray]:
    """(crop chunk the scorer chose for this batch shape, its scores)."""
    out = np.asarray(scorer(params, rest, features, ids, budget))
    (chunk,) = scorer.chunks.values()
    return chunk, out


def test_crops_per_pass_default_to_one_on_cpu_and_follow_the_config_and_the_budget():
    detector = urdmu.URDMU(tiny_config("unused").model, rngs=urdmu.nnx.Rngs(0))
    graphdef, params, rest = evaluate.stacked_model(detector)
    features = np.random.default_rng(0).normal(size=(2, 4, 24, DIM)).astype(np.float16)
    ids = np.ones((2, 24), np.int32)
    direct = np.asarray(detector.scores(features.astype(np.float32)))

    one, scores_one = _scored_chunk(evaluate.Scorer(graphdef), params, rest, features, ids)
    assert one == 1  # the automatic choice on CPU
    three, scores_three = _scored_chunk(evaluate.Scorer(graphdef, crop_chunk=3), params, rest, features, ids)
    assert three == 2  # the largest divisor of the 4 crops up to 3
    every, scores_every = _scored_chunk(evaluate.Scorer(graphdef, crop_chunk=4), params, rest, features, ids)
    assert every == 4
    for scores in (scores_one, scores_three, scores_every):
        np.testing.assert_allclose(scores[0], direct, atol=1e-6)

    # A budget under the 4-crop program's estimate but over the 2-crop one's: 2 crops per pass.
    scorer = evaluate.Scorer(graphdef, crop_chunk=4)
    need = {c: evaluate.program_bytes(scorer._jit.lower(params, rest, features, ids, {}, c).compile()) for c in (2, 4)}
    assert need[2] < need[4]
    fitted, scores_fitted = _scored_chunk(scorer, params, rest, features, ids, budget=(need[2] + need[4]) // 2)
    assert fitted == 2
    np.testing.assert_allclose(scores_fitted[0], direct, atol=1e-6)
    with pytest.raises(ValueError, match="config.data.eval_crop_chunk must be >= 0"):
        evaluate.Scorer(graphdef, crop_chunk=-1)


def test_concurrency_is_two_on_a_one_device_cpu_mesh_and_one_elsewhere():
    config = default_data_config()
    assert pipeline.eval_concurrency(config, distributed.make_mesh(1, 1)) == 2
    assert pipeline.eval_concurrency(config, distributed.make_mesh(1, 2)) == 1
    config.eval_concurrency = 3
    assert pipeline.eval_concurrency(config, distributed.make_mesh(1, 2)) == 3
    config.eval_concurrency = -1
    with pytest.raises(ValueError, match="config.data.eval_concurrency must be >= 0"):
        pipeline.eval_concurrency(config, distributed.make_mesh(1, 1))


def test_rows_up_to_512_take_one_batched_attention_product_and_longer_rows_tiles():
    assert [evaluate.eval_attention_block(n) for n in (16, 512, 513, 1024, 1025, 6784)] == [
        None, None, 512, 512, 1024, 1024]
