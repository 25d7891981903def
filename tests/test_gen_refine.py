"""Prompt refinement: post-processing on controlled strings, the S1.2 instruction, a tiny VLM."""
import numpy as np
import pytest
from PIL import Image

from generation import refine, workers

ITEM = {"id": "fighting-000", "class": "fighting", "text": "fighting", "kind": "abnormal"}


@pytest.mark.parametrize("answer, expected", [
    ("Generate a man pushes another man near the door. Then he leaves.",
     "Generate a man pushes another man near the door, natural movement, fixed camera."),
    ('Assistant: "A person shoves a cyclist 3.5 m from the bench."\nSecond line.',
     "Generate a person shoves a cyclist 3.5 m from the bench, natural movement, fixed camera."),
    ("\n\n**Generate fighting behavior, manifested as two people grappling on the walkway**",
     "Generate fighting behavior, manifested as two people grappling on the walkway, "
     "natural movement, fixed camera."),
    ("<|im_start|>two students wrestle beside the stairs!<|im_end|>",
     "Generate two students wrestle beside the stairs, natural movement, fixed camera."),
])
def test_postprocess_keeps_one_sentence_and_appends_the_template(answer, expected):
    assert refine.postprocess(answer, ITEM) == (expected, True)


@pytest.mark.parametrize("answer", ["", "  \n ", "Fight.", "<unk> <unk> ,"])
def test_unusable_answers_fall_back_to_the_coarse_prompt(answer):
    assert refine.postprocess(answer, ITEM) == ("Generate fighting, natural movement, fixed camera.", False)


def test_template_is_configurable_and_appended_once():
    prompt, _ = refine.postprocess("Generate a cart rolls down the ramp.", ITEM, ("static view",))
    assert prompt == "Generate a cart rolls down the ramp, static view."
    assert refine.with_template("Generate x.", ()) == "Generate x."


def test_instruction_is_the_s12_text_with_the_category():
    text = refine.instruction_for(ITEM)
    assert 'completing the pattern "Generate fighting behavior, manifested as ..."' in text
    assert "Camera motion is strictly prohibited." in text
    assert "Do not invent unseen objects, persons, weapons, or motions." in text
    normal = refine.instruction_for({**ITEM, "kind": "normal", "class": "normal", "text": "normal campus activity"})
    assert "normal activity" in normal and "anomaly" not in normal.lower()


def _plan(tmp_path, n=2):
    """A plan of n items with random init images."""
    (tmp_path / "init_images").mkdir(parents=True)
    items = []
    for i in range(n):
        image = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "init_images" / f"{i}.png")
        items.append({**ITEM, "id": f"fighting-{i:03d}", "image": f"init_images/{i}.png"})
    items[-1].update(kind="normal", id="normal-000", **{"class": "normal", "text": "normal campus activity"})
    workers.write_jsonl(tmp_path / "plan.jsonl", items)
    return tmp_path


TINY = refine.RefineSettings(vlm_model="tiny", max_new_tokens=8, device="cpu")


def test_tiny_vlm_refinement_is_deterministic_and_resumable(tmp_path, monkeypatch):
    first = refine.run_refine(TINY, workdir=str(_plan(tmp_path / "a")))
    second = refine.run_refine(TINY, workdir=str(_plan(tmp_path / "b")))
    prompts_a = [item["prompt"] for item in workers.read_jsonl(first)]
    prompts_b = [item["prompt"] for item in workers.read_jsonl(second)]
    assert prompts_a == prompts_b
    for prompt in prompts_a:
        assert prompt.startswith("Generate ") and prompt.endswith(", natural movement, fixed camera.")
    stored = workers.read_jsonl(first)
    assert all("refined" in item and item["image"].startswith("init_images/") for item in stored)
    # Finished items are skipped: a rerun does not even load the VLM.
    monkeypatch.setattr(refine, "_load_vlm", lambda *a: pytest.fail("VLM loaded for finished items"))
    refine.run_refine(TINY, workdir=str(tmp_path / "a"))


def test_local_model_folder_loads_through_auto_classes(tmp_path):
    from generation import models

    folder = models.tiny_vlm_dir(tmp_path / "vlm")
    image = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    answers = []
    for source in ("tiny", folder):
        processor, model = models.load_vlm(source)
        answers.append(refine.vlm_answer(processor, model, image, refine.instruction_for(ITEM), 6))
    assert answers[0] == answers[1] and answers[0].strip()


def test_no_refine_is_template_only_without_a_vlm(tmp_path, monkeypatch):
    monkeypatch.setattr(refine, "_load_vlm", lambda *a: pytest.fail("--no-refine must not load a VLM"))
    plan = refine.run_refine(refine.RefineSettings(refine=False), workdir=str(_plan(tmp_path)))
    prompts = [(item["prompt"], item["refined"]) for item in workers.read_jsonl(plan)]
    assert prompts == [("Generate fighting, natural movement, fixed camera.", False),
                       ("Generate normal campus activity, natural movement, fixed camera.", False)]
